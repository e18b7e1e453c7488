"""DACS's cross-domain mixing, as FST's UDA code has it (mmseg/models/utils/dacs_transforms.py,
taken from DACS): half of the source classes pasted onto target images, then colour jitter and
Gaussian blur of the mixed image.

- `source_class_masks`: the public `get_class_masks` draws, for every image, from the classes
  present in the WHOLE source batch (its `torch.unique(labels)` is over the batch, not the
  image), ignore value 255 included, ceil(n / 2) of them without replacement; image i's mask is
  where its own label holds one of them. An image may so receive fewer than half its classes.
- `mix`: mask * source + (1 - mask) * target, for images, labels and pixel weights alike.
- `color_jitter_images` / `blur_images`: one coin per batch each (jitter when u > p, p = 0.2;
  blur when u > 0.5), drawn by the caller; per image the jitter factors (strength s = 0.2) and
  the blur sigma U(0.15, 1.15), kernel floor(ceil(0.1 H) - 0.5 + ceil(0.1 H) % 2) rows (the same
  for columns), reflect border. The public jitter is kornia's ColorJitter (brightness additive,
  contrast multiplicative, HSV saturation and hue, in a random order per call); here the same
  four with torchvision's saturation (a blend with grey), in a random order per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from semiseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def source_class_masks(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(N, H, W) bool: True where source image i holds one of the classes drawn for it."""
    classes = torch.unique(labels)
    count = len(classes)
    masks = []
    for label in labels:
        order = torch.randperm(count, generator=generator)[: (count + count % 2) // 2]
        masks.append(torch.isin(label, classes[order.to(classes.device)]))
    return torch.stack(masks)


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Source inside the mask, target outside; `mask` (N, H, W) broadcast over channels."""
    if source.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, source, target)


def blur_kernel_size(size: int) -> int:
    """The public kernel length for an image side of `size` pixels (odd, about a tenth)."""
    tenth = math.ceil(0.1 * size)
    return int(math.floor(tenth - 0.5 + tenth % 2))


def blur_images(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each image blurred with its own sigma ~ U(0.15, 1.15) (normalised images: blurring is
    linear, so it commutes with the normalisation)."""
    n, c, h, w = images.shape
    sigma = 0.15 + torch.rand(n, 1, generator=generator, dtype=torch.float64).float()
    out = images
    for dim, size in ((2, h), (3, w)):
        k = blur_kernel_size(size)
        if k < 3:  # images under 21 px: the public kernel would be a single tap
            continue
        taps = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).to(images)
        kernel = kernel.repeat_interleave(c, 0)  # (n*c, k)
        pad = (0, 0, k // 2, k // 2) if dim == 2 else (k // 2, k // 2, 0, 0)
        x = F.pad(out.reshape(1, n * c, h, w), pad, mode="reflect")
        shape = (n * c, 1, k, 1) if dim == 2 else (n * c, 1, 1, k)
        out = F.conv2d(x, kernel.view(shape), groups=n * c).view(n, c, h, w)
    return out


def color_jitter_images(
    images: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """Each (ImageNet-normalised) image: brightness + U(-s, s), contrast x U(1-s, 1+s),
    saturation U(1-s, 1+s), hue + U(-s, s) turns, in a random order, clamped to [0, 1]."""
    mean, std = IMAGENET_MEAN.to(images), IMAGENET_STD.to(images)
    rgb = (images * std + mean).clamp(0, 1)
    out = []
    for img in rgb:
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        factors = [2 * strength * v - strength for v in u]  # each U(-s, s)
        ops = [
            lambda x, f=factors[0]: (x + f).clamp(0, 1),
            lambda x, f=factors[1]: (x * (1 + f)).clamp(0, 1),
            lambda x, f=factors[2]: TF.adjust_saturation(x, 1 + f),
            lambda x, f=factors[3]: TF.adjust_hue(x, f),
        ]
        for i in torch.randperm(4, generator=generator).tolist():
            img = ops[i](img)
        out.append(img)
    return (torch.stack(out) - mean) / std
