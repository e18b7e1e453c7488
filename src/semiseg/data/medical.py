"""Medical volumes in the layout of the public UniMatch ACDC code (`dataset.format: h5`).

    <root>/data/slices/<case>_slice_<k>.h5   2D training slices: `image` (H, W) float in [0, 1],
                                             `label` (H, W) class indices
    <root>/data/<case>.h5                    3D validation volumes: `image`, `label` (D, H, W)
    <root>/splits/<n>/labeled.txt            one file per line, relative to the root (n = 1, 3, 7
    <root>/splits/<n>/unlabeled.txt          labeled cases); UniMatch's splits/acdc/ as it is
    <root>/splits/valtest.txt                the validation volumes (`dataset.val_list`; the public
                                             code validates on its val and test cases together)

The `medical` augmentation preset (`dataset.augment: medical`), as the public code: with
probability 1/2 a random multiple of 90 degrees and a flip along a random axis, else with
probability 1/4 a rotation by an integer angle in [-20, 20) degrees (nearest neighbour, same size), then a
nearest-neighbour resize of image and mask to crop_size x crop_size (the whole slice, no crop).
Unlabeled slices are quantised to 8 bits; the strong views are ColorJitter(0.5, 0.5, 0.5, 0.25)
with probability 0.8 and a Gaussian blur with probability 0.5 on that 8-bit image, each with its
own CutMix box. Images are one channel in [0, 1], not normalised (the public UNet's input).
Validation items are whole volumes; `evaluation.volume` predicts them slice by slice.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms as T

from semiseg.data.datasets import LabeledList, UnlabeledViews
from semiseg.data.splits import Sample, SplitError, read_list

FORMATS = ("images", "h5")
AUGMENTS = ("natural", "medical")
H5_LAYOUT = (
    "<root>/data/slices/*.h5 (training slices) and <root>/data/*.h5 (validation volumes), keys "
    "image and label; <root>/splits/<n>/labeled.txt, unlabeled.txt and <root>/splits/valtest.txt (dataset.val_list), "
    "one file per line (UniMatch's splits/acdc/)"
)

_jitter = T.ColorJitter(0.5, 0.5, 0.5, 0.25)


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label int64) of one HDF5 file; a missing key or file fails in one line."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise SplitError(
                    f"{path} has no {' or '.join(missing)} dataset (keys image, label)"
                )
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()], dtype=np.int64)
    except OSError as e:
        raise SplitError(f"cannot read {path}: {e}") from None
    if image.shape != label.shape:
        raise SplitError(f"{path}: image {image.shape} and label {label.shape} differ in shape")
    check_values(path, image, label)
    return image, label


def check_values(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """The public ACDC files hold intensities scaled to 0..1 and class indices: anything else
    (raw scanner values, a label of 256 that an 8-bit cast would wrap to 0) fails in one line."""
    if image.size and not np.isfinite(image).all():
        raise SplitError(f"{path}: the image holds NaN or inf values")
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise SplitError(
            f"{path}: image intensities span {image.min():g}..{image.max():g}, not 0..1: scale "
            "each volume to 0..1 (min-max, as UniMatch's ACDC files) before training"
        )
    if label.size and (label.min() < 0 or label.max() > 255):
        raise SplitError(
            f"{path}: label values span {label.min()}..{label.max()}: labels are class indices "
            "(0 background, 255 ignored)"
        )


def read_h5_list(list_file: Path) -> list[Sample]:
    """One HDF5 file per line (image and label in it): Samples with mask None."""
    samples = read_list(list_file, require_mask=False)
    for s in samples:
        if s.mask is not None:
            raise SplitError(
                f"{list_file}: '{s.image} {s.mask}' has two fields; dataset.format=h5 lists one "
                "HDF5 file per line (keys image and label)"
            )
    return samples


def check_exist(root: Path, samples: list[Sample], what: str) -> None:
    missing = [s.image for s in samples if not (root / s.image).is_file()]
    if missing:
        raise SplitError(
            f"{len(missing)} files of the {what} list are missing under {root} "
            f"(e.g. {missing[0]}); expected layout: {H5_LAYOUT}"
        )


# -- the medical augmentation ------------------------------------------------------------------


def _rot_flip(image: np.ndarray, label: np.ndarray):
    k = random.randrange(4)
    axis = random.randrange(2)
    image, label = np.rot90(image, k), np.rot90(label, k)
    return np.flip(image, axis).copy(), np.flip(label, axis).copy()


def _rotate(image: np.ndarray, label: np.ndarray):
    angle = random.randrange(-20, 20)
    img = Image.fromarray(image, mode="F").rotate(angle, Image.NEAREST)
    lab = Image.fromarray(label.astype(np.uint8), mode="L").rotate(angle, Image.NEAREST)
    return np.array(img, dtype=np.float32), np.array(lab, dtype=np.int64)


def _resize(image: np.ndarray, label: np.ndarray, size: int):
    if image.shape == (size, size):
        return image, label
    img = Image.fromarray(np.ascontiguousarray(image), mode="F").resize((size, size), Image.NEAREST)
    lab = Image.fromarray(label.astype(np.uint8), mode="L").resize((size, size), Image.NEAREST)
    return np.array(img, dtype=np.float32), np.array(lab, dtype=np.int64)


def medical_geometry(image: np.ndarray, label: np.ndarray, size: int):
    """Rotation/flip as the public code draws them, then the resize to size x size."""
    if random.random() > 0.5:
        image, label = _rot_flip(image, label)
    elif random.random() > 0.5:
        image, label = _rotate(image, label)
    return _resize(image, label, size)


def _to_8bit(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), mode="L")


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32) / 255.0).unsqueeze(0)


def medical_strong(img: Image.Image) -> Image.Image:
    out = _jitter(img) if random.random() < 0.8 else img
    if random.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    return out


# -- datasets ----------------------------------------------------------------------------------


class SliceLabeledDataset(LabeledList):
    """{"image": (1, S, S) float, "mask": (S, S) long}; the list repeated to `length`."""

    def __getitem__(self, index):
        image, label = read_h5(self.root / self.samples[index].image)
        image, label = medical_geometry(image, label, self.crop_size)
        return {"image": torch.from_numpy(image).unsqueeze(0), "mask": torch.from_numpy(label)}


class SliceUnlabeledDataset(UnlabeledViews):
    """One-channel slices (datasets.UnlabeledViews): the medical rotation, flip and resize, the
    medical strong views. No padding: `ignore` is all zero. `gt` is the slice's label (the HDF5
    files carry one), only logged as the pseudo-label accuracy."""

    def load(self, index, with_gt=True):
        image, label = read_h5(self.root / self.samples[index].image)
        return (image, label), label  # the partner's geometry moves its label too (unused)

    def view(self, decoded, gt):
        image, label = medical_geometry(*decoded, self.crop_size)
        img = _to_8bit(image)
        view = {
            "weak": _tensor(img),
            "ignore": torch.zeros((self.crop_size,) * 2, dtype=torch.long),
            "gt": torch.from_numpy(label),
        }
        for k in range(1, self.num_strong + 1):
            view[f"strong{k}"] = _tensor(medical_strong(img))
        return view


class VolumeDataset(Dataset):
    """Whole volumes: {"image": (D, H, W) float, "mask": (D, H, W) long, "name"}. The name is
    the file's stem, or its path without suffix where two listed files share a stem (their
    Dice must not merge, nor their predictions overwrite each other)."""

    def __init__(self, root, samples: list[Sample]):
        self.root = Path(root)
        self.samples = list(samples)
        stems = [Path(s.image).stem for s in self.samples]
        self.names = [
            stem if stems.count(stem) == 1 else str(Path(s.image).with_suffix(""))
            for stem, s in zip(stems, self.samples, strict=True)
        ]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path = self.root / self.samples[index].image
        image, label = read_h5(path)
        if image.ndim == 2:  # a single slice is a volume of depth 1
            image, label = image[None], label[None]
        if image.ndim != 3:
            raise SplitError(f"{path}: a validation volume is (D, H, W), not {image.shape}")
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(label),
            "name": self.names[index],
        }
