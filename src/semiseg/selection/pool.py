"""The pool select_images.py chooses from, per dataset format: how its files are listed, read
into the network's input and predicted, and which files move together when one is chosen.

- `images`: one image file per pool entry, predicted as eval.py predicts the dataset;
- `h5` (ACDC): 2D slices, predicted as the volume evaluation predicts each slice (resized to
  crop_size, the logits resized back). `unit=case` (default) chooses whole cases: a case is every
  slice whose file name shares the part before `_slice_` (UniMatch's `patient001_frame01_slice_3`),
  scored by the mean of its slices' scores, its features the mean of theirs, and `budget` counts
  cases; `unit=slice` chooses single slices;
- `cd` (change pairs): one pair per entry (A/ and B/ under one name), scored through the siamese
  network as one 6-channel input, so the uncertainty is that of the change mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from semiseg.data import change, medical
from semiseg.data import transforms as tf
from semiseg.data.splits import Sample
from semiseg.errors import ConfigError
from semiseg.evaluation.volume import predict_volume
from semiseg.predict import tta_probabilities

UNITS = ("case", "slice")
CASE_MARK = "_slice_"  # ACDC slice files: <case>_slice_<k>.h5


@dataclass
class Pool:
    """The pool's files (`samples`, as unlabeled.txt lists them) and the units chosen from them:
    `members[u]` are the sample indices of unit u (one each, except ACDC cases)."""

    samples: list[Sample]
    names: list[str]
    members: list[list[int]]

    def __len__(self) -> int:
        return len(self.names)

    def unit_samples(self, units) -> list[Sample]:
        """The samples of the given units, unit by unit, each unit's in list order."""
        return [self.samples[i] for u in units for i in self.members[int(u)]]


def case_of(path: str) -> str:
    """The case a slice file belongs to: its name before `_slice_` (the name without suffix
    when there is no `_slice_`, a case of one slice)."""
    stem = Path(path).name.rsplit(".", 1)[0]
    return stem.split(CASE_MARK)[0] if CASE_MARK in stem else stem


def group(samples: list[Sample], unit: str) -> Pool:
    """The pool's units: (unit=case) one per case in first-seen order, else one per sample."""
    if unit != "case":
        return Pool(samples, [s.image for s in samples], [[i] for i in range(len(samples))])
    cases: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        cases.setdefault(case_of(s.image), []).append(i)
    return Pool(samples, list(cases), list(cases.values()))


def check_unit(unit, fmt: str) -> str:
    """ACDC's `unit` (case or slice); an image or a pair for the other formats."""
    if fmt != "h5":
        return "image" if fmt != "cd" else "pair"
    if unit not in UNITS:
        raise ConfigError(
            f"unit={unit}: ACDC chooses unit=case (every slice of a case, as annotators label "
            "a volume) or unit=slice"
        )
    return unit


def unit_groups(values: np.ndarray, members: list[list[int]]) -> np.ndarray:
    """Per unit, the mean of its members' rows (scores (N,) or features (N, D))."""
    return np.stack([values[m].mean(axis=0) for m in members])


class Format:
    """How one dataset format lists, reads and predicts its pool."""

    name = "images"

    def __init__(self, root: Path, mode: str, crop_size: int, num_classes: int):
        self.root, self.mode, self.crop, self.num_classes = Path(root), mode, crop_size, num_classes

    def load(self, sample: Sample) -> Tensor:
        """The network's input (1, C, H, W)."""
        return tf.normalize(tf.load_image(self.root / sample.image))[None]

    def probabilities(self, network, x: Tensor) -> Tensor:
        """Class probabilities (1, K, H, W) at the input's size, as eval.py predicts it."""
        mode = "sliding_window" if self.mode == "sliding_window" else "original"
        return tta_probabilities(network, x, mode, self.crop, self.num_classes)

    def network_input(self, x: Tensor) -> Tensor:
        """What a forward pass of the network takes (the pair of predictions, the features)."""
        return x

    def thumbnails(self, sample: Sample) -> list[Image.Image]:
        with Image.open(self.root / sample.image) as img:
            return [img.convert("RGB")]

    def read_list(self, path: Path) -> list[Sample]:
        from semiseg.data.splits import read_list

        return read_list(path, require_mask=False)


class SliceFormat(Format):
    name = "h5"

    def load(self, sample: Sample) -> Tensor:
        image, _ = medical.read_h5(self.root / sample.image)
        if image.ndim != 2:
            raise ConfigError(
                f"{self.root / sample.image}: a training slice is (H, W), not {image.shape}"
            )
        return torch.from_numpy(image)[None, None]

    def probabilities(self, network, x: Tensor) -> Tensor:
        return predict_volume(network, x[0], self.crop).cpu()

    def network_input(self, x: Tensor) -> Tensor:
        return F.interpolate(x, (self.crop, self.crop), mode="bilinear", align_corners=False)

    def thumbnails(self, sample: Sample) -> list[Image.Image]:
        image, _ = medical.read_h5(self.root / sample.image)
        return [Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")]

    def read_list(self, path: Path) -> list[Sample]:
        return medical.read_h5_list(path)


class PairFormat(Format):
    name = "cd"

    def load(self, sample: Sample) -> Tensor:
        return change.pair_tensor(*change.load_pair(self.root, sample.image))[None]

    def probabilities(self, network, x: Tensor) -> Tensor:
        return tta_probabilities(network, x, "original", self.crop, self.num_classes)

    def thumbnails(self, sample: Sample) -> list[Image.Image]:
        return [img.convert("RGB") for img in change.load_pair(self.root, sample.image)]

    def read_list(self, path: Path) -> list[Sample]:
        return change.read_names(path)


FORMATS = {"images": Format, "h5": SliceFormat, "cd": PairFormat}
