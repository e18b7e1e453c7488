"""Bi-temporal change detection (`dataset.format: cd`) in the layout of the public UniMatch
remote-sensing code (more-scenarios/remote-sensing, WHU-CD and LEVIR-CD):

    <root>/A/<name>                    the first image of each pair (RGB)
    <root>/B/<name>                    the second image, co-registered, the same size
    <root>/label/<name>                the change mask: 0 unchanged, 255 changed (0/1 is read too)
    <root>/splits/<split>/labeled.txt  one file name per line (5%, 10%, 20%, 40% as the public
    <root>/splits/<split>/unlabeled.txt   splits/whu/ and splits/levir/ name them)
    <root>/splits/test.txt             the pairs evaluated (`dataset.val_list`)

A pair travels as ONE 6-channel tensor, A's normalised RGB then B's, so that every method's batch
is what it already handles; the siamese model (models/change.py) splits it again. The change
mask is a 2-class mask (0 unchanged, 1 changed, 255 ignored).

Augmentation, as the public dataset/semicd.py does it:
- geometry drawn once per pair and applied to A, B and the mask alike: the long side scaled by
  randint(0.8 L, 1.2 L) (bilinear, the mask nearest), padding to crop_size (images 0, mask 255),
  a random crop_size square, a horizontal flip with probability 1/2;
- the strong views photometric only and drawn for A and B independently: ColorJitter(0.5, 0.5,
  0.5, 0.25) with probability 0.8, then a Gaussian blur (sigma ~ U(0.1, 2)) with probability 0.5
  (no random grayscale, unlike the natural-image views);
- one CutMix box per strong view, shared by A and B (it is one box on the 6-channel tensor);
- the unlabeled ignore mask is the padding (the public code takes it from the padded label).
Validation pairs are whole and unaugmented.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms as T

from semiseg.data import transforms as tf
from semiseg.data.datasets import LabeledList, UnlabeledViews
from semiseg.data.splits import Sample, SplitError
from semiseg.errors import ConfigError

FORMAT = "cd"
AUGMENT = "change"
FOLDERS = ("A", "B", "label")
LAYOUT = (
    "<root>/A/<name>, <root>/B/<name>, <root>/label/<name> (0 unchanged, 255 changed); "
    "<root>/splits/<split>/labeled.txt, unlabeled.txt and <root>/splits/test.txt, one file "
    "name per line (UniMatch's more-scenarios/remote-sensing/splits/whu/ or levir/)"
)
RATIO_RANGE = (0.8, 1.2)  # the public code's resize range for change detection

_jitter = T.ColorJitter(0.5, 0.5, 0.5, 0.25)


# -- the files ---------------------------------------------------------------------------------


def read_names(list_file: Path) -> list[Sample]:
    """One file name per line (the pair's name in A/, B/ and label/): Samples of that name."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise SplitError(f"split file {list_file} does not exist; expected layout: {LAYOUT}")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if len(name.split()) != 1:
            raise SplitError(
                f"{list_file}:{number}: '{name}' has more than one field; change-detection "
                "lists hold one file name per line (the same name in A/, B/ and label/)"
            )
        samples.append(Sample(name, None))
    return samples


def check_pairs(root: Path, samples: list[Sample], what: str, labels: bool) -> None:
    """Every listed pair has its A and B image (and its label where `labels`)."""
    folders = FOLDERS if labels else FOLDERS[:2]
    for folder in folders:
        missing = [s.image for s in samples if not (root / folder / s.image).is_file()]
        if missing:
            raise SplitError(
                f"{len(missing)} of the {len(samples)} pairs of the {what} list lack their "
                f"{folder}/ file under {root} "
                f"(e.g. {root / folder / missing[0]}); put each pair's images in A/ and B/ and "
                f"its change mask in label/ under the same name; expected layout: {LAYOUT}"
            )


def load_pair(root: Path, name: str) -> tuple[Image.Image, Image.Image]:
    a, b = tf.load_image(root / "A" / name), tf.load_image(root / "B" / name)
    if a.size != b.size:
        raise SplitError(
            f"pair {name}: {root / 'A' / name} is {a.size[0]}x{a.size[1]} but {root / 'B' / name} "
            f"is {b.size[0]}x{b.size[1]}; the two images of a pair must be co-registered (the "
            "same size)"
        )
    return a, b


def load_change_mask(root: Path, name: str, size: tuple[int, int]) -> Image.Image:
    """The change mask as an 'L' image of 0 (unchanged) and 1 (changed). The public files hold
    0 and 255; 0 and 1 are read too. Any other value fails, naming the file."""
    path = root / "label" / name
    values = np.asarray(tf.load_mask(path))
    present = set(np.unique(values).tolist())
    if not (present <= {0, 255} or present <= {0, 1}):
        shown = ", ".join(map(str, sorted(present)[:6]))
        raise SplitError(
            f"change mask {path} holds the values {shown}: a change mask is binary, 0 unchanged "
            "and 255 (or 1) changed; threshold it (e.g. value > 127 -> 255)"
        )
    if values.shape[::-1] != size:
        raise SplitError(
            f"change mask {path} is {values.shape[1]}x{values.shape[0]} but its images are "
            f"{size[0]}x{size[1]}; they must have the same size"
        )
    return Image.fromarray((values > 0).astype(np.uint8), mode="L")


def refuse_pairs(dataset_cfg, tool: str) -> None:
    """predict.py and export.py take single RGB images: a pair model stops in one line."""
    if (dataset_cfg or {}).get("format") == FORMAT:
        raise ConfigError(
            f"{tool} takes single RGB images, and this checkpoint was trained on image pairs "
            f"(dataset={dataset_cfg.get('name')}, change detection): predict the pairs of a "
            "split list with eval.py save_predictions=true"
        )


# -- the augmentation --------------------------------------------------------------------------


def joint_geometry(a, b, masks: list, fills: list[int], crop_size: int):
    """Resize, pad-and-crop and flip drawn once and applied to both images and every mask."""
    size = tf.long_side_size(*a.size, RATIO_RANGE)
    a, b = a.resize(size, Image.BILINEAR), b.resize(size, Image.BILINEAR)
    masks = [m.resize(size, Image.NEAREST) for m in masks]
    # B rides along as a "mask" of crop and flip (both mode-agnostic), padded with 0 like A
    a, (b, *masks) = tf.pad_and_crop(a, [b, *masks], crop_size, [0, *fills])
    a, (b, *masks) = tf.hflip(a, [b, *masks])
    return a, b, masks


def change_strong(img: Image.Image) -> Image.Image:
    """One image's strong view: colour jitter (p 0.8) then Gaussian blur (p 0.5)."""
    out = _jitter(img) if random.random() < 0.8 else img
    if random.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    return out.copy() if out is img else out


def pair_tensor(a: Image.Image, b: Image.Image) -> torch.Tensor:
    """(6, H, W): A's and B's ImageNet-normalised RGB."""
    return torch.cat([tf.normalize(a), tf.normalize(b)])


# -- datasets ----------------------------------------------------------------------------------


class ChangeLabeledDataset(LabeledList):
    """{"image": (6, S, S), "mask": (S, S) long}; the list repeated to `length`."""

    def __getitem__(self, index):
        name = self.samples[index].image
        a, b = load_pair(self.root, name)
        mask = load_change_mask(self.root, name, a.size)
        a, b, (mask,) = joint_geometry(a, b, [mask], [tf.IGNORE], self.crop_size)
        return {"image": pair_tensor(a, b), "mask": tf.mask_to_tensor(mask)}


class ChangeUnlabeledDataset(UnlabeledViews):
    """Image pairs (datasets.UnlabeledViews), each view a 6-channel pair: geometry shared by A
    and B, the photometric strong views drawn per image. `gt` is the pair's change mask where
    label/ has one (only logged, as the pseudo-label accuracy), else all 255."""

    def load(self, index, with_gt=True):
        name = self.samples[index].image
        a, b = load_pair(self.root, name)
        gt = None
        if with_gt and (self.root / "label" / name).is_file():
            gt = load_change_mask(self.root, name, a.size)
        return (a, b), gt

    def view(self, decoded, gt):
        a, b = decoded
        marker = Image.new("L", a.size, 0)
        masks, fills = [marker], [tf.PAD_MARKER]
        if gt is not None:
            masks, fills = [marker, gt], [tf.PAD_MARKER, tf.IGNORE]
        a, b, masks = joint_geometry(a, b, masks, fills, self.crop_size)
        marker = tf.mask_to_tensor(masks[0])
        view = {
            "weak": pair_tensor(a, b),
            "ignore": torch.where(marker == tf.PAD_MARKER, tf.IGNORE, 0),
        }
        for k in range(1, self.num_strong + 1):
            view[f"strong{k}"] = pair_tensor(change_strong(a), change_strong(b))
        if gt is not None:
            view["gt"] = tf.mask_to_tensor(masks[1])
        return view


class ChangeValDataset(Dataset):
    """Whole pairs, no resize: {"image": (6, H, W), "mask", "name"}."""

    def __init__(self, root, samples: list[Sample]):
        self.root = Path(root)
        self.samples = list(samples)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        name = self.samples[index].image
        a, b = load_pair(self.root, name)
        mask = load_change_mask(self.root, name, a.size)
        return {
            "image": pair_tensor(a, b),
            "mask": tf.mask_to_tensor(mask),
            "name": Path(name).stem,
        }


def build_sets(root: Path, splits_dir: Path, folder: Path, val_list: str, unlabeled: bool):
    """(labeled, unlabeled, val) Samples of a split folder and the val list, every file checked."""
    labeled = read_names(folder / "labeled.txt")
    if not labeled:
        raise SplitError(f"{folder / 'labeled.txt'} lists no pairs")
    unlabeled_file = folder / "unlabeled.txt"
    pool = read_names(unlabeled_file) if unlabeled_file.is_file() else []
    if unlabeled and not pool:
        raise SplitError(
            f"split '{folder.name}' in {splits_dir} has no unlabeled.txt (or it is empty): "
            "semi-supervised methods need unlabeled pairs; use method=supervised"
        )
    val = read_names(splits_dir / val_list)
    if not val:
        raise SplitError(f"{splits_dir / val_list} lists no pairs")
    check_pairs(root, labeled, "labeled", labels=True)
    if unlabeled:
        check_pairs(root, pool, "unlabeled", labels=False)
    check_pairs(root, val, val_list, labels=True)
    return labeled, pool, val
