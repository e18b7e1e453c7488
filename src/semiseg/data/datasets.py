"""Split-file datasets: labeled crops, unlabeled weak/strong views, whole validation images.

Items are dicts of tensors (and strings) so that the default collate function batches them.
`read_mask` turns a mask file into an 'L' image of class indices; the datamodule passes the
dataset's `MaskReader` (label map, value check), the default reads the file's values as they are.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from semiseg.data import transforms as tf
from semiseg.data.reco_labeled import reco_labeled, reco_unlabeled_crop
from semiseg.data.splits import Sample, SplitError

MIX_MODES = ("same", "shuffle", "none")


def _check_same_size(img, mask, root, sample):
    if img.size != mask.size:
        raise SplitError(
            f"image {root / sample.image} is {img.size[0]}x{img.size[1]} but its mask "
            f"{root / sample.mask} is {mask.size[0]}x{mask.size[1]}; they must have the same size"
        )


def _require_masks(samples, what):
    for s in samples:
        if s.mask is None:
            raise SplitError(f"{what} sample {s.image!r} has no mask; {what} lists need masks")


def other_index(index: int, n: int) -> int:
    """A mix partner's index, uniform over the other items (the item itself when it is alone)."""
    return (index + 1 + random.randrange(n - 1)) % n if n > 1 else index


def repeated(samples: list[Sample], length: int | None) -> list[Sample]:
    """The labeled list stretched to `length` items, as the public code: repeated in file order
    and truncated (no shuffle first, so the first `length % n` images come once more per epoch: at
    most one extra visit); the sampler then shuffles the repeated list every epoch."""
    samples = list(samples)
    if length is not None and length > len(samples):
        samples = (samples * math.ceil(length / len(samples)))[:length]
    return samples


class LabeledList(Dataset):
    """A labeled list of `crop_size` training items, repeated to `length` (see `repeated`); the
    layouts' labeled datasets (ACDC slices, change-detection pairs) add their `__getitem__`."""

    def __init__(self, root, samples: list[Sample], crop_size: int, length: int | None = None):
        if not samples:
            raise SplitError("the labeled list is empty")
        self.root = Path(root)
        self.crop_size = crop_size
        self.samples = repeated(samples, length)

    def __len__(self):
        return len(self.samples)


class LabeledDataset(Dataset):
    """Random resize, crop (mask padded with `pad_label`: 255, ignored, or U2PL's and FST's 0)
    and flip; {"image", "mask"}.

    `resize` names how the random resize draws (transforms.RESIZES), or is a (W, H) for mmseg's
    fixed resize (aspect kept; transforms.training_resize); `cat_max_ratio` replaces the crop by
    mmseg's RandomCrop with that rule (transforms.py): the domain-adaptation pipelines of
    DAFormer and FST. `augment="reco"` replaces all of it by ReCo's labeled augmentation as CSS
    runs it (data/reco_labeled.py: scale s ~ U(`scale`), reflection padding, crop, jitter, blur,
    flip).
    """

    def __init__(
        self,
        root,
        samples: list[Sample],
        crop_size: int,
        length: int | None = None,
        read_mask=None,
        pad_fill: str = "zero",
        resize: str | Sequence[int] = "long_side",
        cat_max_ratio: float | None = None,
        pad_label: int = tf.IGNORE,
        augment: str = "unimatch",
        scale: tuple[float, float] = (0.5, 1.5),
    ):
        if not samples:
            raise SplitError("the labeled list is empty")
        _require_masks(samples, "labeled")
        self.root = Path(root)
        self.crop_size = crop_size
        self.pad_fill, self.pad_label = pad_fill, pad_label
        self.read_mask = read_mask or tf.load_mask
        self.samples = repeated(samples, length)
        self.resize = tf.resize_setting(resize)
        self.cat_max_ratio = cat_max_ratio
        self.augment, self.scale = augment, tuple(scale)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        img, mask = load_pair(self.root, sample, self.read_mask)
        if self.augment == "reco":
            img, mask = reco_labeled(img, mask, self.crop_size, self.scale)
            return {"image": tf.normalize(img), "mask": tf.mask_to_tensor(mask)}
        img, (mask,) = tf.training_resize(img, [mask], self.resize)
        if self.cat_max_ratio is not None:
            box = tf.cat_max_ratio_box(np.asarray(mask), self.crop_size, self.cat_max_ratio)
            img, (mask,) = tf.crop_then_pad(
                img, [mask], box, self.crop_size, [self.pad_label], self.pad_fill
            )
        else:
            img, (mask,) = tf.pad_and_crop(
                img, [mask], self.crop_size, [self.pad_label], self.pad_fill
            )
        img, (mask,) = tf.hflip(img, [mask])
        return {"image": tf.normalize(img), "mask": tf.mask_to_tensor(mask)}


class UnlabeledViews(Dataset):
    """The unlabeled stream of every modality: a weak view, `num_strong` strong views, a CutMix
    box per strong view, the padding ignore mask, `gt` (the image's mask where it has one, only
    logged as the pseudo-label accuracy; else all 255) and the CutMix partner views (`mix_*`).

    `mix` selects where the partner views come from: "same" re-augments the same image (the
    reference: one sampler drives both loaders), "shuffle" augments a random other image, "none"
    adds no partner (the method mixes within the batch, e.g. `batch.flip(0)`).

    A modality is a preset of two methods: `load(index, with_gt)` -> (what it decodes, its mask
    or None) and `view(decoded, gt)` -> the weak/strong/ignore(/gt) views of one augmentation.
    """

    def __init__(self, root, samples: list[Sample], crop_size: int, num_strong=2, mix="same"):
        if not samples:
            raise SplitError("the unlabeled list is empty")
        mix = "none" if mix is None else str(mix)
        if mix not in MIX_MODES:
            raise ValueError(f"unknown mix mode {mix!r}; choose one of {', '.join(MIX_MODES)}")
        if num_strong not in (0, 1, 2):
            # 0: methods that make their strong views in the training step (iMAS, AugSeg)
            raise ValueError(f"num_strong must be 0, 1 or 2, got {num_strong!r}")
        self.root = Path(root)
        self.samples = list(samples)
        self.crop_size = crop_size
        self.num_strong = num_strong
        self.mix = mix

    def __len__(self):
        return len(self.samples)

    def load(self, index: int, with_gt: bool = True):
        raise NotImplementedError

    def view(self, decoded, gt) -> dict:
        raise NotImplementedError

    def __getitem__(self, index):
        decoded, gt = self.load(index)
        item = self.view(decoded, gt)
        item.setdefault("gt", torch.full((self.crop_size,) * 2, tf.IGNORE, dtype=torch.long))
        for k in range(1, self.num_strong + 1):
            item[f"box{k}"] = tf.cutmix_box(self.crop_size, p=0.5)
        if self.mix == "none":
            return item
        if self.mix == "same":
            partner = self.view(decoded, None)  # the decoded image is reused: no second decode
        else:
            partner = self.view(self.load(other_index(index, len(self)), with_gt=False)[0], None)
        partner.pop("gt", None)
        item.update({f"mix_{key}": value for key, value in partner.items()})
        return item


class UnlabeledDataset(UnlabeledViews):
    """Natural images: UniMatch's resize, crop and flip shared by the views, colour jitter,
    grayscale and blur for each strong view. `crop="reco"`: the crop of CSS's public unlabeled
    images instead (data/reco_labeled.py `reco_unlabeled_crop`: no resize, no flip, reflection
    padding that is image content, so nothing is marked ignored)."""

    def __init__(
        self,
        root,
        samples,
        crop_size,
        num_strong=2,
        mix="same",
        read_mask=None,
        pad_fill="zero",
        resize="long_side",
        crop="unimatch",
    ):
        super().__init__(root, samples, crop_size, num_strong, mix)
        self.crop = crop
        self.read_mask = read_mask or tf.load_mask
        self.pad_fill = pad_fill
        # the random draw's name, or (W, H): mmseg's fixed resize, aspect kept (UDA targets)
        self.resize = tf.resize_setting(resize)

    def load(self, index, with_gt=True):
        sample = self.samples[index]
        img = tf.load_image(self.root / sample.image)
        gt = None
        if with_gt and sample.mask is not None:
            gt = self.read_mask(self.root / sample.mask)
            _check_same_size(img, gt, self.root, sample)
        return img, gt

    def view(self, img, gt):
        """One joint geometric augmentation, then the weak and strong photometric views."""
        if self.crop == "reco":
            return self._reco_view(img, gt)
        marker = Image.new("L", img.size, 0)
        masks = [marker] if gt is None else [marker, gt]
        img, masks = tf.training_resize(img, masks, self.resize)
        fills = [tf.PAD_MARKER, tf.IGNORE][: len(masks)]
        img, masks = tf.pad_and_crop(img, masks, self.crop_size, fills, self.pad_fill)
        img, masks = tf.hflip(img, masks)
        marker = tf.mask_to_tensor(masks[0])
        view = {
            "weak": tf.normalize(img),
            "ignore": torch.where(marker == tf.PAD_MARKER, tf.IGNORE, 0),
        }
        for k in range(1, self.num_strong + 1):
            view[f"strong{k}"] = tf.normalize(tf.strong_color(img))
        if gt is not None:
            view["gt"] = tf.mask_to_tensor(masks[1])
        return view


    def _reco_view(self, img, gt):
        img, masks = reco_unlabeled_crop(img, [] if gt is None else [gt], self.crop_size)
        view = {
            "weak": tf.normalize(img),
            "ignore": torch.zeros((self.crop_size,) * 2, dtype=torch.long),
        }
        for k in range(1, self.num_strong + 1):
            view[f"strong{k}"] = tf.normalize(tf.strong_color(img))
        if gt is not None:
            view["gt"] = tf.mask_to_tensor(masks[0])
        return view


def load_pair(root: Path, sample: Sample, read_mask):
    """The image and mask of one sample, checked to be the same size."""
    img = tf.load_image(root / sample.image)
    mask = read_mask(root / sample.mask)
    _check_same_size(img, mask, root, sample)
    return img, mask


class ValDataset(Dataset):
    """Whole images, no resize: {"image", "mask", "name"}."""

    def __init__(self, root, samples: list[Sample], read_mask=None):
        _require_masks(samples, "val")
        self.root = Path(root)
        self.samples = list(samples)
        self.read_mask = read_mask or tf.load_mask

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        img, mask = load_pair(self.root, sample, self.read_mask)
        return {
            "image": tf.normalize(img),
            "mask": tf.mask_to_tensor(mask),
            "name": Path(sample.image).stem,
        }
