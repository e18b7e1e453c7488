"""Rare-class sampling (data/rare_class.py) against a transcription of DAFormer's
`get_rcs_class_probs` and `get_rare_class_sample` (usr922/FST mmseg/datasets/uda_dataset.py): the
class probabilities exactly, the image draws statistically, the crop re-draws, the errors."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from semiseg.data.rare_class import RareClassSampling, class_probabilities
from semiseg.errors import ConfigError


def public_rcs_class_probs(sample_class_stats, temperature):
    """get_rcs_class_probs on the loaded stats (a list of {class: pixels} per file)."""
    overall_class_stats = {}
    for s in sample_class_stats:
        for c, n in s.items():
            c = int(c)
            if c not in overall_class_stats:
                overall_class_stats[c] = n
            else:
                overall_class_stats[c] += n
    overall_class_stats = {
        k: v for k, v in sorted(overall_class_stats.items(), key=lambda item: item[1])
    }
    freq = torch.tensor(list(overall_class_stats.values()))
    freq = freq / torch.sum(freq)
    freq = 1 - freq
    freq = torch.softmax(freq / temperature, dim=-1)
    return list(overall_class_stats.keys()), freq.numpy()


@dataclass(frozen=True)
class Sample:
    mask: str


class Masks:
    """A labeled dataset of whole masks (no crop) whose items say which image they are."""

    def __init__(self, masks, crops=None):
        self.root = Path(".")
        self.masks = masks
        self.samples = [Sample(f"m{i}") for i in range(len(masks))] * 2  # a repeated list
        self.crops = crops  # index -> list of crops returned in turn
        self.calls = 0

    def read_mask(self, path):
        return self.masks[int(path.name[1:])]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        self.calls += 1
        if self.crops is not None:
            return {"mask": torch.as_tensor(self.crops[index].pop(0)), "index": index}
        return {"mask": torch.as_tensor(self.masks[index]), "index": index}


def _masks():
    rng = np.random.default_rng(0)
    masks = []
    for i in range(6):
        m = np.zeros((20, 20), dtype=np.uint8)
        m[: 2 + i, :] = 1  # a common class
        m[0, 0] = 255
        if i in (2, 5):
            m[10:12, :10] = 2  # a rare class: 20 pixels in two images
        m[15:, 15:] = rng.integers(3, 5)  # 25 pixels of class 3 or 4
        masks.append(m)
    return masks


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_class_probabilities_equal_the_public_function(temperature):
    masks = _masks()
    counts = [
        {int(c): int((m == c).sum()) for c in np.unique(m) if c != 255} for m in masks
    ]
    classes, probs = class_probabilities(counts, temperature)
    public_classes, public_probs = public_rcs_class_probs(counts, temperature)
    assert classes == public_classes
    assert np.allclose(probs.numpy(), public_probs, rtol=1e-5, atol=0)  # theirs in float32


def test_images_are_drawn_as_the_public_sampler(tmp_path):
    """Image frequencies over 6000 draws: class c ~ p, then uniformly one of the images with
    more than min_pixels of c; each image's expected share within 4.5 standard deviations."""
    torch.manual_seed(0)
    data = Masks(_masks())
    rcs = RareClassSampling(data, temperature=0.02, min_pixels=10, min_crop_ratio=0.0)
    classes, probs = rcs.classes, rcs.probs.numpy()
    expected = np.zeros(6)
    for c, p in zip(classes, probs, strict=True):
        holders = [i for i, m in enumerate(data.masks) if (m == c).sum() > 10]
        expected[holders] += p / len(holders)
    n = 6000
    seen = np.bincount([rcs[0]["index"] for _ in range(n)], minlength=6) / n
    sd = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(seen - expected) <= 4.5 * sd + 1e-9), (seen, expected)
    assert expected[[2, 5]].sum() > 0.3  # the rare class pulls its two images up


def test_a_crop_is_drawn_again_until_it_holds_enough_of_the_class():
    masks = [np.full((4, 4), 1, dtype=np.uint8)]
    masks[0][:2] = 2
    poor, rich = np.full((4, 4), 1), np.full((4, 4), 1)
    rich[:3] = 2  # 12 pixels > min_pixels (8) * 0.5
    poor[0, :3] = 2  # 3 pixels: not enough
    data = Masks(masks, crops={0: [poor, poor, rich, poor]})
    rcs = RareClassSampling(data, temperature=1e-3, min_pixels=7, min_crop_ratio=0.5)
    rcs.draw_class = lambda: 2
    item = rcs[0]
    assert int((item["mask"] == 2).sum()) == 12 and data.calls == 3


def test_at_most_ten_crops_then_the_last_is_kept():
    masks = [np.full((4, 4), 2, dtype=np.uint8)]
    data = Masks(masks, crops={0: [np.full((4, 4), 1)] * 12})
    rcs = RareClassSampling(data, temperature=1.0, min_pixels=7, min_crop_ratio=0.5)
    rcs.draw_class = lambda: 2
    rcs[0]
    assert data.calls == 10


def test_a_class_without_an_image_above_min_pixels_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"class\(es\) \[2\].*min_pixels=22"):
        RareClassSampling(Masks(_masks()), min_pixels=22)


def test_pixel_counts_are_cached_and_reused(tmp_path):
    cache = tmp_path / "rare_class_pixels.json"
    data = Masks(_masks())
    first = RareClassSampling(data, min_pixels=10, cache=cache)
    stored = json.loads(cache.read_text())
    assert stored["masks"] == [f"m{i}" for i in range(6)]  # each image once
    data.masks = None  # a second run must not read the masks
    again = RareClassSampling(data, min_pixels=10, cache=cache)
    assert again.classes == first.classes and torch.equal(again.probs, first.probs)
