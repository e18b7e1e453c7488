import random

import numpy as np
import pytest
import torch
from PIL import Image
from distributions import ks_statistic

from semiseg.data import transforms as tf
from semiseg.data.splits import SplitError


def _encoded(w, h, seed=0):
    """An RGB image whose red channel equals its mask, so alignment can be checked exactly."""
    mask = np.random.default_rng(seed).integers(0, 6, (h, w), dtype=np.uint8)
    img = np.stack([mask, np.full_like(mask, 100), np.full_like(mask, 200)], axis=-1)
    return Image.fromarray(img), Image.fromarray(mask)


@pytest.mark.parametrize("w,h", [(200, 100), (75, 151)])
def test_resize_long_side_range_and_aspect(seeded, w, h):
    img, mask = _encoded(w, h)
    long_sides = set()
    for _ in range(300):
        out, (m,) = tf.resize_long_side(img, [mask])
        ow, oh = out.size
        assert m.size == out.size
        long_side = max(ow, oh)
        assert int(0.5 * max(w, h)) <= long_side <= 2 * max(w, h)
        # the short side follows the long one with round-half-up
        if w >= h:
            assert ow == long_side and oh == int(h * ow / w + 0.5)
        else:
            assert oh == long_side and ow == int(w * oh / h + 0.5)
        assert set(np.unique(np.asarray(m))) <= set(range(6))  # nearest: no new values
        long_sides.add(long_side)
    assert min(long_sides) < 0.6 * max(w, h) and max(long_sides) > 1.9 * max(w, h)


def test_pad_right_bottom_with_per_mask_fills(seeded):
    img = Image.new("RGB", (50, 30), (10, 20, 30))
    labeled, marker = Image.new("L", (50, 30), 3), Image.new("L", (50, 30), 0)
    out, (lab, mark) = tf.pad_and_crop(img, [labeled, marker], 64, [255, 254])
    out, lab, mark = np.asarray(out), np.asarray(lab), np.asarray(mark)
    assert out.shape == (64, 64, 3) and lab.shape == mark.shape == (64, 64)
    # both sides smaller than the crop: the crop is the padded image, original at the top left
    assert (out[:30, :50] == (10, 20, 30)).all()
    assert (out[30:] == 0).all() and (out[:, 50:] == 0).all()
    assert (lab[:30, :50] == 3).all() and (lab[30:] == 255).all() and (lab[:, 50:] == 255).all()
    assert (mark[:30, :50] == 0).all() and (mark[30:] == 254).all() and (mark[:, 50:] == 254).all()


def test_crop_keeps_image_and_mask_aligned_when_one_side_is_padded(seeded):
    img, mask = _encoded(100, 40)
    offsets = set()
    for _ in range(50):
        out, (m,) = tf.pad_and_crop(img, [mask], 64, [255])
        out, m = np.asarray(out), np.asarray(m)
        assert (m[40:] == 255).all() and (m[:40] != 255).all()
        assert (out[40:] == 0).all()
        assert (out[:40, :, 0] == m[:40]).all()
        # the crop is a window of the original: find its offset
        src = np.asarray(mask)
        offsets.add(next(x for x in range(37) if (src[:, x : x + 64] == m[:40]).all()))
    assert len(offsets) > 5  # the horizontal offset is random


def test_hflip_keeps_alignment(seeded):
    img, mask = _encoded(33, 20)
    out, (m,) = tf.hflip(img, [mask], p=1.0)
    assert (np.asarray(m) == np.fliplr(np.asarray(mask))).all()
    assert (np.asarray(out)[..., 0] == np.asarray(m)).all()
    same, (m0,) = tf.hflip(img, [mask], p=0.0)
    assert (np.asarray(m0) == np.asarray(mask)).all() and same is img
    flips = sum(tf.hflip(img, [mask])[1][0] is not mask for _ in range(400))
    assert 150 < flips < 250


def test_strong_color_views_differ(seeded):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    views = [np.asarray(tf.strong_color(img)) for _ in range(10)]
    assert all(v.shape == (40, 40, 3) for v in views)
    differing = sum(not np.array_equal(a, b) for a, b in zip(views[::2], views[1::2], strict=True))
    assert differing >= 4
    assert tf.strong_color(img) is not img


def test_cutmix_box_p0_gives_zeros():
    box = tf.cutmix_box(64, p=0.0)
    assert box.shape == (64, 64) and box.dtype == torch.uint8 and box.sum() == 0


def test_cutmix_box_bounds_and_area(seeded):
    size = 64
    drawn = 0
    for _ in range(300):
        box = tf.cutmix_box(size, p=1.0)
        assert set(box.unique().tolist()) <= {0, 1}
        rows = box.any(1).nonzero().flatten()
        cols = box.any(0).nonzero().flatten()
        if len(rows) == 0:
            continue
        drawn += 1
        h, w = len(rows), len(cols)
        # one solid rectangle, inside the square by construction of the indices
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        assert box.sum() == w * h
        # w = int(sqrt(a / r)), h = int(sqrt(a * r)) -> w * h <= a < (w + 1) * (h + 1)
        assert w * h <= 0.4 * size * size
        assert (w + 1) * (h + 1) > 0.02 * size * size
    assert drawn == 300  # at size 64 the smallest box is still at least 4 x 16 pixels


def test_cutmix_box_probability(seeded):
    drawn = sum(int(tf.cutmix_box(32, p=0.5).any()) for _ in range(400))
    assert 160 < drawn < 240


def reference_cutmix_box(size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Our transcription of the public UniMatch `obtain_cutmix_box` (given that a box is drawn):
    the area once, then aspect ratio and top-left corner redrawn until the box fits."""
    area = rng.uniform(0.02, 0.4) * size * size
    while True:
        ratio = rng.uniform(0.3, 1 / 0.3)
        w, h = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
        x, y = rng.integers(0, size), rng.integers(0, size)
        if x + w <= size and y + h <= size:
            return x, y, w, h


def _box_geometry(box: torch.Tensor) -> tuple[int, int, int, int]:
    rows = box.any(1).nonzero().flatten()
    cols = box.any(0).nonzero().flatten()
    return int(cols[0]), int(rows[0]), len(cols), len(rows)


def test_cutmix_box_distribution_matches_reference(seeded):
    size, n = 321, 3000
    ours = [_box_geometry(tf.cutmix_box(size, p=1.0)) for _ in range(n)]
    rng = np.random.default_rng(0)
    theirs = [reference_cutmix_box(size, rng) for _ in range(n)]

    def area(boxes):
        return np.array([w * h for _, _, w, h in boxes]) / size**2

    # Mean area given a box: 0.207 with the area drawn once (0.143 if redrawn in the loop). The
    # standard error of each mean is about 0.002, so 0.012 is a generous band.
    assert area(theirs).mean() == pytest.approx(0.207, abs=0.012)
    assert area(ours).mean() == pytest.approx(area(theirs).mean(), abs=0.012)
    # Whole distributions: two-sample KS at alpha = 0.001 (critical value 1.95 * sqrt(2 / n)).
    critical = 1.95 * np.sqrt(2 / n)
    columns = {
        "area": (area(ours), area(theirs)),
        "aspect w/h": ([w / h for _, _, w, h in ours], [w / h for _, _, w, h in theirs]),
        "left x": ([b[0] for b in ours], [b[0] for b in theirs]),
        "top y": ([b[1] for b in ours], [b[1] for b in theirs]),
    }
    for name, (a, b) in columns.items():
        assert ks_statistic(a, b) < critical, name


def test_ks_statistic_by_hand():
    # CDFs of {1, 2} and {2, 3}: at 1 they are 1/2 and 0, the largest gap
    assert ks_statistic([1, 2], [2, 3]) == 0.5
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0


def test_normalize_and_mask_to_tensor():
    mean = tuple(int(round(c * 255)) for c in (0.485, 0.456, 0.406))
    x = tf.normalize(Image.new("RGB", (7, 5), mean))
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert x.abs().max() < 0.01
    white = tf.normalize(Image.new("RGB", (2, 2), (255, 255, 255)))
    assert torch.allclose(
        white[:, 0, 0], (1 - tf.IMAGENET_MEAN.flatten()) / tf.IMAGENET_STD.flatten()
    )
    m = tf.mask_to_tensor(Image.new("L", (7, 5), 255))
    assert m.shape == (5, 7) and m.dtype == torch.long and (m == 255).all()


def test_load_mask_palette_gives_indices(tmp_path):
    idx = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    img = Image.new("P", (3, 2))
    img.putdata(idx.flatten().tolist())
    palette = [0] * 768
    palette[3:9] = [200, 10, 10, 10, 200, 10]  # colours that differ from the indices
    img.putpalette(palette)
    img.save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as saved:
        assert saved.mode == "P"
    mask = tf.load_mask(tmp_path / "m.png")
    assert mask.mode == "L" and (np.asarray(mask) == idx).all()


def test_load_mask_single_channel_and_16bit(tmp_path):
    idx = np.array([[0, 3], [255, 7]], dtype=np.uint8)
    Image.fromarray(idx).save(tmp_path / "l.png")
    Image.fromarray(idx.astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("l.png", "i16.png"):
        mask = tf.load_mask(tmp_path / name)
        assert mask.mode == "L" and (np.asarray(mask) == idx).all()
    Image.fromarray(np.array([[0, 1000]], dtype=np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(SplitError, match="big.png"):
        tf.load_mask(tmp_path / "big.png")


def test_load_mask_rejects_rgb_with_file_name(tmp_path):
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "colour.png")
    with pytest.raises(SplitError) as err:
        tf.load_mask(tmp_path / "colour.png")
    assert "colour.png" in str(err.value) and "single-channel or palette" in str(err.value)


def test_load_image_converts_to_rgb_and_names_unreadable_files(tmp_path):
    Image.new("L", (4, 3), 9).save(tmp_path / "g.png")
    img = tf.load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (4, 3)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(SplitError, match="bad.jpg"):
        tf.load_image(tmp_path / "bad.jpg")
    with pytest.raises(SplitError, match="missing.jpg"):
        tf.load_image(tmp_path / "missing.jpg")


def test_randomness_follows_python_and_torch_seeds():
    img, mask = _encoded(60, 50)

    def run():
        out, (m,) = tf.resize_long_side(img, [mask])
        out, (m,) = tf.pad_and_crop(out, [m], 48, [255])
        return np.asarray(tf.strong_color(out)), tf.cutmix_box(48)

    results = []
    for _ in range(2):
        random.seed(3)
        torch.manual_seed(3)
        results.append(run())
    assert np.array_equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def public_crop_padding_colour(mean=(0.485, 0.456, 0.406)):
    """iMAS's and AugSeg's `Crop`: cv2 pads a float32 copy with mean x 255, np.uint8 truncates."""
    padded = np.full((1, 1, 3), np.array(mean) * 255.0, dtype=np.float32)
    return tuple(int(v) for v in np.uint8(padded)[0, 0])


def test_mean_fill_pads_with_the_public_mean_colour_and_zero_stays_black():
    img = Image.new("RGB", (10, 20), (200, 10, 30))
    mask = Image.new("L", (10, 20), 1)
    random.seed(0)
    out, (m,) = tf.pad_and_crop(img, [mask], 32, [255], fill="mean")
    pixels = np.asarray(out).reshape(-1, 3)
    padded = np.asarray(m).flatten() == 255
    assert padded.any() and (~padded).any()
    assert {tuple(p) for p in pixels[padded]} == {public_crop_padding_colour()} == {(123, 116, 103)}
    assert {tuple(p) for p in pixels[~padded]} == {(200, 10, 30)}
    out, (m,) = tf.pad_and_crop(img, [mask], 32, [255])
    padded = np.asarray(m).flatten() == 255
    assert {tuple(p) for p in np.asarray(out).reshape(-1, 3)[padded]} == {(0, 0, 0)}
