"""UniMatch's strong view on a whole batch inside the training step (`method.strong_views=step`).

The data workers make the same view per image from the 8-bit PIL crop (`data.transforms.
strong_color`): ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8, grayscale with p 0.2, Gaussian blur
with sigma ~ U(0.1, 2.0) with p 0.5. torchvision's ColorJitter draws, per call, an order of its
four adjustments (a random permutation) and brightness, contrast, saturation ~ U(0.5, 1.5), hue
~ U(-0.25, 0.25); on PIL images the three factors are ImageEnhance's blends, which the batched
8-bit kernels of `augment.intensity` follow (there with one factor per image).

Here every image draws its parameters from the same distributions (`strong_plan`) and they are
applied in the same order (`apply_strong`) on the batch's device: only weak views leave the
workers, the strong views are made where the model runs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from semiseg.augment.intensity import (
    blur,
    brightness,
    color,
    contrast,
    from_uint8,
    hue,
    rgb_images,
    to_uint8,
)

# ColorJitter's adjustments in its own index order (brightness, contrast, saturation, hue).
JITTER_OPS = (brightness, contrast, color, hue)
JITTER_RANGES = ((0.5, 1.5), (0.5, 1.5), (0.5, 1.5), (-0.25, 0.25))


class StrongPlan(NamedTuple):
    """The random parameters of a batch's strong views, one row per image."""

    jitter: Tensor  # (N,) bool, p 0.8
    order: Tensor  # (N, 4) a permutation of JITTER_OPS' indices
    factors: Tensor  # (N, 4) brightness, contrast, saturation, hue
    gray: Tensor  # (N,) bool, p 0.2
    blur: Tensor  # (N,) bool, p 0.5
    sigma: Tensor  # (N,) U(0.1, 2.0)


def strong_plan(n: int, generator=None) -> StrongPlan:
    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    return StrongPlan(
        jitter=torch.rand(n, generator=generator) < 0.8,
        order=torch.stack([torch.randperm(4, generator=generator) for _ in range(n)]),
        factors=torch.stack([uniform(lo, hi) for lo, hi in JITTER_RANGES], dim=1),
        gray=torch.rand(n, generator=generator) < 0.2,
        blur=torch.rand(n, generator=generator) < 0.5,
        sigma=uniform(0.1, 2.0),
    )


def apply_to_rows(images: Tensor, chosen: Tensor, op, *params: Tensor) -> Tensor:
    """`op(rows, *their params)` on the rows of `images` where `chosen` (N,) is true, in place;
    each of `params` holds one row per image (N, ...) and stays on its own device (the plans
    are drawn on the CPU, the images may be elsewhere). Returns `images`."""
    index = chosen.nonzero().flatten()
    if len(index):
        where = index.to(images.device)
        images[where] = op(images[where], *(p[index] for p in params))
    return images


def color_jitter(images: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """ColorJitter of uint8 images (N, 3, H, W), each in its own order with its own factors."""
    out = images.clone()
    for position in range(4):
        for op_index, op in enumerate(JITTER_OPS):
            apply_to_rows(out, order[:, position] == op_index, op, factors[:, op_index])
    return out


def _grayscale(images: Tensor) -> Tensor:
    return TF.rgb_to_grayscale(images, num_output_channels=3)


def apply_strong(images: Tensor, plan: StrongPlan) -> Tensor:
    """The strong views of uint8 images (N, 3, H, W) under `plan`: jitter, grayscale, blur."""
    out = images.clone()
    apply_to_rows(out, plan.jitter, color_jitter, plan.order, plan.factors)
    apply_to_rows(out, plan.gray, _grayscale)
    return apply_to_rows(out, plan.blur, blur, plan.sigma)


def unimatch_strong(images: Tensor, generator=None) -> Tensor:
    """The strong view of each ImageNet-normalised image (N, 3, H, W): a new tensor. Stacked
    pairs (N, 6, H, W) get one independent view per image (`intensity.rgb_images`)."""
    flat = rgb_images(images)
    plan = strong_plan(flat.shape[0], generator)
    return from_uint8(apply_strong(to_uint8(flat), plan)).reshape(images.shape)
