"""The crops FST asks of the data module, as its public semi-supervised code makes them
(semi_seg/fst/dataset/augmentation.py): `RandResize`'s scale factor, drawn half the time below 1
and half above, and `Crop`'s labeled padding labelled 0."""

import random
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.data.datamodule import SemiSegDataModule
from semiseg.data.datasets import LabeledDataset, UnlabeledDataset
from semiseg.data.splits import Sample
from semiseg.errors import ConfigError
from semiseg.methods.fst import FST

REPO = Path(__file__).parents[2]


def public_rand_resize_size(w, h, scale=(0.5, 2.0)):
    """`RandResize.__call__` without aspect ratio: the new (width, height)."""
    if random.random() < 0.5:
        temp_scale = scale[0] + (1.0 - scale[0]) * random.random()
    else:
        temp_scale = 1.0 + (scale[1] - 1.0) * random.random()
    return int(w * temp_scale), int(h * temp_scale)


@pytest.mark.parametrize("w, h", [(500, 375), (2048, 1024), (7, 3)])
def test_scale_halves_draws_as_public_rand_resize(w, h):
    below = 0
    for seed in range(300):
        random.seed(seed)
        public = public_rand_resize_size(w, h)
        random.seed(seed)
        assert tf.scale_halves_size(w, h) == (max(public[0], 1), max(public[1], 1)), seed
        below += public[0] < w
    assert 120 < below < 180  # half of the draws shrink, half enlarge


def test_scale_halves_by_hand(monkeypatch):
    draws = iter([0.3, 0.5, 0.9, 0.25])  # below 1: 0.5 + 0.5 * 0.5; above: 1 + 1 * 0.25
    monkeypatch.setattr(tf.random, "random", lambda: next(draws))
    assert tf.scale_halves_size(100, 50) == (75, 37)
    assert tf.scale_halves_size(100, 50) == (125, 62)


def test_fst_asks_for_the_public_crops_and_the_labeled_padding_is_class_0(tmp_path):
    cfg = OmegaConf.load(REPO / "conf" / "method" / "fst.yaml")
    cfg.batch_size = 2
    needs = FST.data_requirements(cfg)
    assert (needs["resize"], needs["labeled_pad_label"], needs["pad_fill"]) == (
        "scale_halves", 0, "mean",
    )  # fmt: skip
    Image.new("RGB", (6, 4), (200, 10, 10)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 6), 3, np.uint8)).save(tmp_path / "a_mask.png")
    samples = [Sample("a.png", "a_mask.png")]
    labeled = LabeledDataset(
        tmp_path, samples, crop_size=16, resize=needs["resize"],
        pad_label=needs["labeled_pad_label"], pad_fill=needs["pad_fill"],
    )  # fmt: skip
    for seed in range(5):
        random.seed(seed)
        mask = labeled[0]["mask"]
        values = set(mask.unique().tolist())
        assert values == {0, 3}, values  # image pixels keep 3, the padding is class 0
        assert (mask == 0).sum() == 16 * 16 - (mask == 3).sum()
    unimatch = LabeledDataset(tmp_path, samples, crop_size=16)  # 255: left out of the loss
    assert set(unimatch[0]["mask"].unique().tolist()) == {3, 255}


@pytest.mark.parametrize("resize", ["scale_halves", "long_side", (20, 12)])
def test_both_datasets_resize_by_their_one_setting(tmp_path, resize):
    """`resize` names the random draw (method.resize) or is a fixed (W, H) (the UDA pipelines):
    a 10 x 6 image of class 3 in a crop larger than any draw keeps the size that setting gives,
    the rest padded 255. The resize is each item's first random draw."""
    Image.new("RGB", (10, 6), (200, 10, 10)).save(tmp_path / "a.png")
    Image.fromarray(np.full((6, 10), 3, np.uint8)).save(tmp_path / "a_mask.png")
    samples = [Sample("a.png", "a_mask.png")]
    labeled = LabeledDataset(tmp_path, samples, crop_size=32, resize=resize)
    unlabeled = UnlabeledDataset(tmp_path, samples, 32, num_strong=0, mix="none", resize=resize)
    for seed in range(6):
        random.seed(seed)
        want = tf.RESIZES[resize](10, 6) if isinstance(resize, str) else (20, 12)
        for dataset, key in ((labeled, "mask"), (unlabeled, "gt")):
            random.seed(seed)
            kept = dataset[0][key] == 3
            assert (int(kept.any(0).sum()), int(kept.any(1).sum())) == want, (seed, key)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("resize", "short_side", r"method.resize='short_side' is unknown: use one of long_side"),
        ("labeled_pad_label", 300, r"method.labeled_pad_label=300: a class index, or 255"),
    ],
)
def test_a_bad_crop_option_is_refused_in_one_line(key, value, message):
    with pytest.raises(ConfigError, match=message):
        SemiSegDataModule("root", "splits", "1", 32, **{key: value})
