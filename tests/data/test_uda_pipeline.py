"""DAFormer's UDA data pipelines (data.uda_pipeline): mmcv's keep-ratio resize, mmseg's
RandomCrop with cat_max_ratio against a transcription of the public rule (tests/public_daformer.py)
on its edges, and the resized whole-image evaluation (eval.mode=resize)."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.data.datamodule import check_uda_pipeline
from semiseg.errors import ConfigError
from semiseg.evaluation.inference import predict

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_daformer import public_random_crop  # noqa: E402


class Offsets:
    """A fixed list of offsets, drawn in turn: `ours(lo, hi)` (random.randint, inclusive) and
    `theirs(lo, hi)` (np.random.randint, exclusive) give the same numbers from the same list."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def _next(self, lo, hi_inclusive):
        value = self.values[self.calls % len(self.values)]
        self.calls += 1
        return min(max(value, lo), hi_inclusive)

    def ours(self, lo, hi):
        return self._next(lo, hi)

    def theirs(self, lo, hi):
        return self._next(lo, hi - 1)


def both(mask, crop, ratio, offsets):
    ours_draw, theirs_draw = Offsets(offsets), Offsets(offsets)
    ours = tf.cat_max_ratio_box(mask, crop, ratio, draw=ours_draw.ours)
    theirs = public_random_crop(mask, crop, ratio, theirs_draw.theirs)
    assert ours_draw.calls == theirs_draw.calls
    return ours, theirs


def test_a_crop_at_exactly_the_ratio_is_redrawn():
    # Columns 0-2 class 1, column 3 class 2: a 4x4 crop at x=0 is exactly 75% class 1.
    mask = np.zeros((4, 8), np.uint8)
    mask[:, :3], mask[:, 3], mask[:, 4:] = 1, 2, 3
    mask[:, 4:6] = 2  # a crop at x=2: columns 2-5 -> classes 1, 2, 2, 2: 75% class 2, redrawn
    mask[:, 6:] = 1  # a crop at x=3: classes 2, 2, 2, 1: 75% again; x=1: 1, 1, 2, 2: kept
    ours, theirs = both(mask, 4, 0.75, [0, 0, 0, 2, 0, 3, 0, 1])
    assert ours == theirs == (0, 4, 1, 5)


def test_an_all_ignore_or_one_class_crop_is_redrawn():
    """Ignore is left out of the shares: half ignore, half one class is one class: redrawn."""
    mask = np.full((4, 12), 255, np.uint8)  # a crop at x=0: all ignore
    mask[:, 6:8] = 1  # a crop at x=4: ignore and class 1 only
    mask[:, 8:10], mask[:, 10:] = 1, 2  # a crop at x=8: half 1, half 2: kept
    ours, theirs = both(mask, 4, 0.75, [0, 0, 0, 4, 0, 8])
    assert ours == theirs == (0, 4, 8, 12)


def test_after_ten_redraws_the_eleventh_crop_is_kept_unchecked():
    mask = np.ones((4, 20), np.uint8)  # no crop can pass
    offsets = [v for x in range(11) for v in (0, x)]  # the 11th crop starts at x=10
    ours, theirs = both(mask, 4, 0.75, offsets)
    assert ours == theirs == (0, 4, 10, 14)


@pytest.mark.parametrize("seed", range(5))
def test_random_masks_choose_the_public_box(seed):
    rng = np.random.default_rng(seed)
    mask = rng.choice([0, 1, 2, 255], size=(24, 40), p=[0.7, 0.1, 0.1, 0.1]).astype(np.uint8)
    mask[:, :20] = 0  # a dominant class on the left half
    offsets = rng.integers(0, 30, size=40).tolist()
    for ratio in (0.5, 0.75, 1.0):
        ours, theirs = both(mask, 16, ratio, offsets)
        assert ours == theirs


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((1914, 1052), (1280, 720), (1280, 704)),  # GTA5: the long side binds
        ((1280, 760), (1280, 760), (1280, 760)),  # SYNTHIA: as stored
        ((2048, 1024), (1024, 512), (1024, 512)),  # Cityscapes
        ((500, 375), (1024, 512), (683, 512)),  # the short side binds: 375 * 512/375, 500 * 1.3653
    ],
)
def test_rescaled_size_is_mmcv_keep_ratio(size, scale, expected):
    assert tf.rescaled_size(*size, scale) == expected


def test_fixed_resize_halves_by_averaging_and_keeps_mask_values():
    """cv2's bilinear at a factor 2 averages 2x2 blocks (no antialiasing beyond them); masks
    take the top-left pixel of each block (cv2 nearest: floor(x * 2))."""
    pixels = (np.arange(4 * 8 * 3) % 64 * 4).astype(np.uint8).reshape(4, 8, 3)  # exact means
    mask = np.arange(32, dtype=np.uint8).reshape(4, 8)
    img, (small,) = tf.fixed_resize(Image.fromarray(pixels), [Image.fromarray(mask)], (4, 2))
    block = pixels.reshape(2, 2, 4, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.array_equal(np.asarray(img), block.astype(np.uint8))
    assert np.array_equal(np.asarray(small), mask[::2, ::2])


def test_crop_then_pad_cuts_at_the_border_and_pads_with_ignore():
    img = Image.fromarray(np.full((3, 5, 3), 200, np.uint8))
    mask = Image.fromarray(np.ones((3, 5), np.uint8))
    box = tf.cat_max_ratio_box(np.asarray(mask), 4, 1.0, draw=lambda lo, hi: hi)
    assert box == (0, 4, 1, 5)  # the short side: offset 0, the end past the border
    out, (m,) = tf.crop_then_pad(img, [mask], box, 4, [tf.IGNORE])
    assert out.size == (4, 4) and np.asarray(out)[3].max() == 0
    assert (np.asarray(m)[:3] == 1).all() and (np.asarray(m)[3] == tf.IGNORE).all()


def test_the_labeled_dataset_uses_the_rule(tmp_path):
    """A source image whose crops are one class except at one offset: the crop found is it."""
    from semiseg.data.datasets import LabeledDataset
    from semiseg.data.splits import Sample

    mask = np.zeros((8, 24), np.uint8)
    mask[:, 12:16] = 1  # crops of 8 at x = 7..13 (7 of 17) hold 3 or 4 columns of class 1
    Image.fromarray(np.zeros((8, 24, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    ds = LabeledDataset(
        tmp_path, [Sample("a.png", "a_mask.png")], 8, resize=(24, 8), cat_max_ratio=0.75
    )  # resize: as stored (no random resize)
    random.seed(0)
    for _ in range(5):
        item = ds[0]
        share = (item["mask"] == 1).float().mean()
        assert 0.375 <= share <= 0.5  # P(10 redraws all miss) = (10/17)^10 < 0.5%; seeded


def test_resized_evaluation_predicts_small_and_compares_at_full_size():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.stack([x[:, 0], -x[:, 0]], 1)  # two classes from the first channel

    image = -torch.ones(1, 3, 8, 16)
    image[..., :, 8:] = 1.0
    probs = predict(model, image, "resize", 4, 2, resize=(8, 4))
    assert seen == [(4, 8)] and probs.shape == (1, 2, 8, 16)
    assert (probs.argmax(1)[..., :, 10:] == 0).all() and (probs.argmax(1)[..., :, :6] == 1).all()
    with pytest.raises(ValueError, match="eval.resize"):
        predict(model, image, "resize", 4, 2)


def test_the_pipeline_setting_is_checked_in_one_line():
    assert check_uda_pipeline(None, None) is None
    with pytest.raises(ConfigError, match="source="):
        check_uda_pipeline({"cat_max_ratio": 0.75}, None)
    with pytest.raises(ConfigError, match="unknown key"):
        check_uda_pipeline({"resize": [1, 2]}, {"name": "gta5"})
    with pytest.raises(ConfigError, match="cat_max_ratio=1.5"):
        check_uda_pipeline({"cat_max_ratio": 1.5}, {"name": "gta5"})
