"""ReCo's augmentation of the labeled images, as CSS's public dataset code runs it in its data
workers (WangChangqi98/CSS `transform` in generalframeworks/dataset_helpers/VOC.py and
Cityscapes.py, `augmentation=True`), on the PIL image and mask:

1. a scale s ~ U(scale) (Python's `random.uniform`; VOC 0.5-1.5, Cityscapes 1.0), the image
   resized bilinear and the mask nearest to (int(h s), int(w s));
2. where that is smaller than the crop, padded on the right and bottom up to it: the image by
   reflection (numpy's `reflect`, repeated when the pad exceeds the image), the mask with 255;
3. torchvision's RandomCrop offsets (torch.randint; none drawn when the padded size is the crop);
4. with p 0.8 (torch.rand(1) > 0.2) ColorJitter((0.75, 1.25) x 3, hue +-0.25): its ops in a random
   order; with p 0.5 PIL's GaussianBlur, sigma ~ U(0.15, 1.15) (random.uniform); with p 0.5 a
   horizontal flip of image and mask (torch.rand(1) > 0.5 each).

Its unlabeled images (`scale_size=(1.0, 1.0)`, `augmentation=False`) take steps 2 and 3 only:
`reco_unlabeled_crop`. The reflected pixels are image content there: labelled by the teacher and
trained, as public.

The draws come in that order from the same generators as the public code, so a seeded worker
makes the same crop: `draw_plan` draws them, `apply_plan` applies them (tests draw plans in
bulk). The ranges are shared with the in-step unlabeled pipeline (augment/reco.py).
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from semiseg.augment.reco import RECO_BLUR_SIGMA, RECO_JITTER_RANGES
from semiseg.data.transforms import IGNORE

# ColorJitter's four adjustments, indexed as its random order counts them
ADJUSTMENTS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


class LabeledPlan(NamedTuple):
    """The random parameters of one labeled crop."""

    height: int  # the rescaled size
    width: int
    top: int  # the crop's corner in the (padded) rescaled image
    left: int
    order: tuple[int, ...] | None  # ColorJitter's order of its ops; None: no jitter
    factors: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    sigma: float | None  # the blur's sigma; None: no blur
    flip: bool


def draw_plan(
    w: int, h: int, crop: int, scale: tuple[float, float], augment: bool = True
) -> LabeledPlan:
    """The draws of the public `transform` for a w x h image, in its order; `augment=False`
    (its unlabeled images) draws the scale and the crop only."""
    s = random.uniform(scale[0], scale[1])
    height, width = int(h * s), int(w * s)
    padded_h, padded_w = max(height, crop), max(width, crop)
    top = left = 0
    if (padded_h, padded_w) != (crop, crop):  # RandomCrop.get_params draws nothing then
        top = int(torch.randint(0, padded_h - crop + 1, size=(1,)))
        left = int(torch.randint(0, padded_w - crop + 1, size=(1,)))
    order, factors = None, (1.0, 1.0, 1.0, 0.0)
    if not augment:
        return LabeledPlan(height, width, top, left, order, factors, None, False)
    if torch.rand(1) > 0.2:
        drawn = T.ColorJitter.get_params(*RECO_JITTER_RANGES)
        order, factors = tuple(int(k) for k in drawn[0]), tuple(float(f) for f in drawn[1:])
    sigma = None
    if torch.rand(1) > 0.5:
        sigma = random.uniform(*RECO_BLUR_SIGMA)
    flip = bool(torch.rand(1) > 0.5)
    return LabeledPlan(height, width, top, left, order, factors, sigma, flip)


def _reflect_pad(img: Image.Image, right: int, bottom: int) -> Image.Image:
    """The image padded on the right and bottom by reflection (the edge pixel not repeated)."""
    pixels = np.asarray(img)
    widths = ((0, bottom), (0, right)) + ((0, 0),) * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, widths, mode="reflect"))


def _constant_pad(mask: Image.Image, right: int, bottom: int, fill: int) -> Image.Image:
    canvas = Image.new(mask.mode, (mask.width + right, mask.height + bottom), fill)
    canvas.paste(mask, (0, 0))
    return canvas


def apply_plan(img: Image.Image, masks: list[Image.Image], crop: int, plan: LabeledPlan):
    """The PIL image and masks rescaled, padded (masks with 255), cropped, then the image
    jittered and blurred and all flipped."""
    size = (plan.width, plan.height)
    img, masks = img.resize(size, Image.BILINEAR), [m.resize(size, Image.NEAREST) for m in masks]
    right, bottom = max(crop - plan.width, 0), max(crop - plan.height, 0)
    if right or bottom:
        img = _reflect_pad(img, right, bottom)
        masks = [_constant_pad(m, right, bottom, IGNORE) for m in masks]
    box = (plan.left, plan.top, plan.left + crop, plan.top + crop)
    img, masks = img.crop(box), [m.crop(box) for m in masks]
    if plan.order is not None:
        for k in plan.order:
            img = ADJUSTMENTS[k](img, plan.factors[k])
    if plan.sigma is not None:
        img = img.filter(ImageFilter.GaussianBlur(radius=plan.sigma))
    if plan.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        masks = [m.transpose(Image.FLIP_LEFT_RIGHT) for m in masks]
    return img, masks


def reco_labeled(img: Image.Image, mask: Image.Image, crop: int, scale: tuple[float, float]):
    """One labeled crop as the public `transform` makes it (see the module docstring)."""
    img, (mask,) = apply_plan(img, [mask], crop, draw_plan(*img.size, crop, scale))
    return img, mask


def reco_unlabeled_crop(img: Image.Image, masks: list[Image.Image], crop: int):
    """One unlabeled crop as the public datasets make it (`scale_size=(1.0, 1.0)`,
    `augmentation=False`): the image at its size, padded by reflection where smaller than the
    crop (the masks with 255), and cropped; no flip, no colour change."""
    return apply_plan(img, masks, crop, draw_plan(*img.size, crop, (1.0, 1.0), augment=False))
