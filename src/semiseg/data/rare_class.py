"""Rare-class sampling (DAFormer, as FST's UDA code has it: mmseg/datasets/uda_dataset.py,
`get_rcs_class_probs` and `UDADataset.get_rare_class_sample`), for the labeled (source) stream:
`data.rare_class_sampling: {temperature: 0.01, min_pixels: 3000, min_crop_ratio: 0.5}`.

From every source mask's pixel count per class (whole masks as stored; ignore left out):
- the class frequencies f_c (pixels of c over all counted pixels) give the draw probabilities
  p_c = softmax((1 - f_c) / T): at T = 0.01 the rarest classes take almost all the mass;
- a sample is drawn as: class c ~ p, then one of the images holding MORE than `min_pixels` pixels
  of c, uniformly; its random crop is drawn again (up to 10 crops in all) until it holds more
  than min_pixels * min_crop_ratio pixels of c, else the last crop is kept.
The index the loader asks for is ignored (the public `__getitem__` ignores it too): an epoch is
as long as before, every item a fresh draw. A class present in the masks but without any image
above `min_pixels` stops the run with its name (the public code asserts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from semiseg.errors import ConfigError

IGNORE = 255
CROP_TRIES = 10


def class_probabilities(pixel_counts: list[dict[int, int]], temperature: float):
    """(classes, probabilities): classes in ascending order of their total pixel count."""
    totals: dict[int, int] = {}
    for counts in pixel_counts:
        for c, n in counts.items():
            totals[c] = totals.get(c, 0) + n
    classes = sorted(totals, key=lambda c: totals[c])
    freq = torch.tensor([totals[c] for c in classes], dtype=torch.float64)
    freq = 1 - freq / freq.sum()
    return classes, torch.softmax(freq / temperature, dim=-1)


def mask_pixel_counts(mask: np.ndarray) -> dict[int, int]:
    counts = np.bincount(mask[mask != IGNORE].ravel().astype(np.int64))
    return {int(c): int(n) for c, n in enumerate(counts) if n > 0}


class RareClassSampling(Dataset):
    """Wraps a labeled dataset with `samples`, `root` and `read_mask` (data/datasets.py)."""

    def __init__(
        self,
        dataset,
        temperature: float = 0.01,
        min_pixels: int = 3000,
        min_crop_ratio: float = 0.5,
        cache: Path | None = None,
    ):
        if temperature <= 0:
            raise ConfigError(f"data.rare_class_sampling.temperature={temperature}: use > 0")
        self.dataset = dataset
        self.min_pixels, self.min_crop_ratio = min_pixels, min_crop_ratio
        first = {}  # one index per distinct image (the list may be repeated)
        for i, sample in enumerate(dataset.samples):
            first.setdefault(sample.mask, i)
        self.indices = list(first.values())
        counts = self._pixel_counts(cache)
        self.classes, self.probs = class_probabilities(counts, temperature)
        self.with_class = {
            c: [i for i, n in zip(self.indices, counts, strict=True) if n.get(c, 0) > min_pixels]
            for c in self.classes
        }
        empty = [c for c, files in self.with_class.items() if not files]
        if empty:
            raise ConfigError(
                f"data.rare_class_sampling: class(es) {empty} have no source image with more "
                f"than min_pixels={min_pixels} pixels; lower data.rare_class_sampling.min_pixels"
            )

    def _pixel_counts(self, cache: Path | None) -> list[dict[int, int]]:
        keys = [str(self.dataset.samples[i].mask) for i in self.indices]
        if cache is not None and cache.is_file():
            stored = json.loads(cache.read_text())
            if stored.get("masks") == keys:
                return [{int(c): n for c, n in d.items()} for d in stored["counts"]]
        root = Path(self.dataset.root)
        counts = [mask_pixel_counts(np.asarray(self.dataset.read_mask(root / k))) for k in keys]
        if cache is not None:  # written atomically: a reader never sees half a file
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"masks": keys, "counts": counts}))
            os.replace(tmp, cache)
        return counts

    def __len__(self):
        return len(self.dataset)

    def draw_class(self) -> int:
        return self.classes[int(torch.multinomial(self.probs, 1))]

    def __getitem__(self, index):
        c = self.draw_class()
        files = self.with_class[c]
        i = files[int(torch.randint(len(files), ()))]
        item = self.dataset[i]
        for _ in range(CROP_TRIES - 1):
            if int((item["mask"] == c).sum()) > self.min_pixels * self.min_crop_ratio:
                break
            item = self.dataset[i]  # a new random crop of the same image
        return item
