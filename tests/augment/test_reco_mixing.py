"""ReCo's batched mixing as CSS uses it: the half-image box, CutOut, ClassMix, worked out by hand."""

import pytest
import torch

from semiseg.augment.mixing import (
    Mixed,
    classmix_masks,
    classmix_with,
    cutout,
    half_area_boxes,
    reco_mix,
)
from semiseg.methods.losses import IGNORE_INDEX


def batch(labels, ignore=None, n_channels=3) -> Mixed:
    """Images whose every channel holds 10 * image index + label; conf = 0.1 * (image + 1)."""
    labels = torch.as_tensor(labels)
    n = labels.shape[0]
    index = torch.arange(n).view(-1, 1, 1)
    images = (10.0 * index + labels).unsqueeze(1).repeat(1, n_channels, 1, 1)
    conf = (0.1 * (index + 1.0)).expand_as(labels).clone()
    ignore = torch.zeros_like(labels) if ignore is None else torch.as_tensor(ignore)
    return Mixed(images, labels, conf, ignore)


@pytest.mark.parametrize("height,width", [(64, 64), (17, 33), (769, 769)])
def test_half_area_boxes_cover_half_the_image_and_fit(height, width):
    g = torch.Generator().manual_seed(0)
    boxes = half_area_boxes(200, height, width, g)
    area = height * width / 2
    for box in boxes:
        rows, cols = box.any(1).sum(), box.any(0).sum()
        # a whole rectangle inside the image (never clipped), w in [W//2 + 1, W - 1]
        assert box.sum() == rows * cols
        assert width // 2 + 1 <= cols <= width - 1
        assert rows == round(area / int(cols))  # h = round(H * W / 2 / w)
        assert abs(int(box.sum()) - area) <= cols / 2 + 1  # half the image, up to the rounding


def test_cutout_sets_zero_and_ignore_inside_the_box():
    b = batch([[[1, 2, 3, 4]], [[5, 6, 7, 8]]])
    box = torch.tensor([[[0, 1, 1, 0]], [[1, 0, 0, 0]]], dtype=torch.bool)
    out = cutout(b, box)
    assert out.images[:, 0, 0].tolist() == [[1, 0, 0, 4], [0, 16, 17, 18]]
    assert out.images[:, 2, 0].tolist() == [[1, 0, 0, 4], [0, 16, 17, 18]]  # every channel
    assert out.ignore[:, 0].tolist() == [[0, 255, 255, 0], [255, 0, 0, 0]]
    assert torch.allclose(out.conf[:, 0], torch.tensor([[0.1, 0, 0, 0.1], [0, 0.2, 0.2, 0.2]]))
    assert torch.equal(out.labels, b.labels)  # labels stay; ignore marks them unusable
    assert b.images[0, 0, 0, 1] == 2  # the input is untouched


def test_classmix_pastes_exactly_half_the_partners_classes():
    labels = torch.tensor(
        [
            [[0, 0, 1, 1, 2, 2, 3, 3]],  # image 0: four classes
            [[4, 4, 4, 5, 5, 5, 5, 5]],  # image 1: two classes
        ]
    )
    b = batch(labels)
    partner = torch.tensor([1, 0])
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        mask = classmix_masks(b.labels, b.ignore, partner, g)
        # image 0 receives one of image 1's two classes, whole; image 1 two of image 0's four
        got0 = set(labels[1][mask[0]].tolist())
        got1 = set(labels[0][mask[1]].tolist())
        assert len(got0) == 1 and len(got1) == 2
        for i, got in ((0, got0), (1, got1)):
            source = labels[partner[i]]
            assert torch.equal(mask[i], torch.isin(source, torch.tensor(sorted(got))))
    out = classmix_with(b, partner, torch.Generator().manual_seed(3))
    mask = classmix_masks(b.labels, b.ignore, partner, torch.Generator().manual_seed(3))
    for i in range(2):
        j = int(partner[i])
        inside = mask[i]
        # labels, confidence and image pixels follow the pasted classes; the rest is own
        assert torch.equal(out.labels[i][inside], labels[j][inside])
        assert torch.equal(out.labels[i][~inside], labels[i][~inside])
        assert torch.allclose(
            out.conf[i][inside], torch.full_like(out.conf[i][inside], 0.1 * (j + 1))
        )
        assert torch.allclose(
            out.conf[i][~inside], torch.full_like(out.conf[i][~inside], 0.1 * (i + 1))
        )
        assert torch.equal(out.images[i, 0][inside], b.images[j, 0][inside])


def test_classmix_counts_ignored_pixels_as_one_value_and_one_class_pastes_nothing():
    labels = torch.tensor([[[0, 0, 1, 1, 7, 7]], [[3, 3, 3, 3, 3, 3]]])
    ignore = torch.tensor([[[0, 0, 0, 0, 255, 255]], [[0, 0, 0, 0, 0, 0]]])
    b = batch(labels, ignore)
    partner = torch.tensor([1, 0])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        mask = classmix_masks(b.labels, b.ignore, partner, g)
        # image 1's partner holds 0, 1 and "ignored": floor(3 / 2) = 1 of them
        chosen = mask[1][0]
        pattern = tuple(chosen.int().tolist())
        assert pattern in {(1, 1, 0, 0, 0, 0), (0, 0, 1, 1, 0, 0), (0, 0, 0, 0, 1, 1)}
        seen.add(pattern)
        # image 0's partner has one class: floor(1 / 2) = 0 classes, nothing pasted (as ReCo)
        assert not mask[0].any()
    assert len(seen) == 3
    # when the ignored pixels are the value drawn, the ignore mark is pasted with them
    for seed in range(30):
        mask = classmix_masks(b.labels, b.ignore, partner, torch.Generator().manual_seed(seed))
        out = classmix_with(b, partner, torch.Generator().manual_seed(seed))
        pasted = mask[1][0][4:].all()
        assert bool(out.ignore[1][0][4:].eq(IGNORE_INDEX).all()) == bool(pasted)


def test_reco_mix_applies_one_draw_to_every_view():
    labels = torch.randint(0, 4, (3, 8, 8), generator=torch.Generator().manual_seed(0))
    a = batch(labels)
    b = Mixed(a.images, (labels + 1) % 4, a.conf * 2, a.ignore)
    partner = torch.tensor([1, 2, 0])
    for mode in ("cutmix", "classmix", "cutout"):
        out_a, out_b = reco_mix((a, b), mode, partner, torch.Generator().manual_seed(1))
        assert torch.equal(out_a.images, out_b.images), mode
        assert torch.equal(out_a.ignore, out_b.ignore), mode
        changed = out_a.images[:, 0] != a.images[:, 0]
        assert changed.any(), mode
        # where view a took its partner's label, view b took its partner's too
        if mode != "cutout":
            took = out_a.conf != a.conf
            assert torch.equal(took, out_b.conf != b.conf), mode
            assert torch.equal(out_b.labels[took], b.labels[partner][took]), mode
    assert reco_mix((a, b), "none", partner) == (a, b)
    with pytest.raises(ValueError, match="mix mode"):
        reco_mix((a,), "mixup", partner)
