"""ReCo's augmentation of the unlabeled batch inside the training step, as CSS's public code runs
it (WangChangqi98/CSS `Model_cross.forward`, `batch_transform_3` and `transform_3` in
generalframeworks/dataset_helpers/VOC.py): after the teacher has labelled the unscaled crop,

1. `rescale_and_crop`: each image drawn its own scale s ~ U(low, high), resized to
   (int(h s), int(w s)) (the image bilinear, labels, confidences and ignore map nearest), padded
   on the right and bottom to the crop (the image by reflection, labels ignored, confidence 0) and
   cropped back to the input size at a uniform offset;
2. the mixing (`mixing.reco_mix`), of the batch gathered from all ranks (`mix_across_ranks`);
3. `reco_jitter`: per image, with p 0.8 ColorJitter(0.75-1.25 brightness, contrast, saturation,
   hue +-0.25, in a random order), with p 0.5 PIL's Gaussian blur sigma ~ U(0.15, 1.15), with
   p 0.5 a horizontal flip of the image and of its labels, confidences and ignore map.

The views (logit space, representation space) share one geometry: every `Mixed` of the tuple is
moved alike. Intensity ops work on the 8-bit image (`augment.intensity`, PIL's numerics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from semiseg.augment.intensity import blur, from_uint8, to_uint8
from semiseg.augment.mixing import Mixed, reco_mix
from semiseg.augment.strong import apply_to_rows, color_jitter
from semiseg.data.transforms import IGNORE as IGNORE_INDEX

RECO_JITTER_RANGES = ((0.75, 1.25), (0.75, 1.25), (0.75, 1.25), (-0.25, 0.25))
RECO_BLUR_SIGMA = (0.15, 1.15)


def _uniform(n: int, low: float, high: float, generator=None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def reflect_index(size: int, total: int) -> Tensor:
    """Source indices of a reflection padding of `size` entries to `total` (numpy's `reflect`,
    the PIL padding torchvision calls, repeated when the pad exceeds the size)."""
    period = 2 * (size - 1)
    if period == 0:
        return torch.zeros(total, dtype=torch.long)
    position = torch.arange(total) % period
    return torch.where(position < size, position, period - position)


class Geometry(NamedTuple):
    """One image's rescale and crop: its new size, then the crop's top-left corner."""

    height: int
    width: int
    top: int
    left: int


def draw_geometry(h: int, w: int, scale: tuple[float, float], generator=None) -> Geometry:
    """The public draw: s ~ U(scale), size int(h s) x int(w s), then RandomCrop's offset in the
    size padded up to (h, w)."""
    s = float(_uniform(1, *scale, generator))
    height, width = int(h * s), int(w * s)
    top = int(torch.randint(0, max(height, h) - h + 1, (1,), generator=generator))
    left = int(torch.randint(0, max(width, w) - w + 1, (1,), generator=generator))
    return Geometry(height, width, top, left)


def pil_nearest_index(size: int, new_size: int) -> Tensor:
    """The source index of each output pixel of PIL's NEAREST resize: its affine transform walks
    x = step / 2 + k step (step = size / new_size) by repeated addition in double precision and
    truncates, so an exact half-way point can fall one pixel low (24 -> 36: pixel 4 reads 2,
    where floor(4.5 * 2 / 3) = 3)."""
    step, x, out = size / new_size, size / new_size * 0.5, []
    for _ in range(new_size):
        out.append(int(x))
        x += step
    return torch.tensor(out)


def _nearest(plane: Tensor, height: int, width: int) -> Tensor:
    rows = pil_nearest_index(plane.shape[0], height).to(plane.device)
    cols = pil_nearest_index(plane.shape[1], width).to(plane.device)
    return plane[rows][:, cols]


def _place(plane: Tensor, g: Geometry, h: int, w: int, fill) -> Tensor:
    """A resized (height, width) plane padded with `fill` to cover the crop, then cropped."""
    padded = plane.new_full((max(g.height, h), max(g.width, w)), fill)
    padded[: g.height, : g.width] = plane
    return padded[g.top : g.top + h, g.left : g.left + w]


def rescale_one(image: Tensor, maps: tuple[Tensor, ...], fills: tuple, g: Geometry):
    """One uint8 image (3, h, w) and its per-pixel maps (h, w) under geometry `g`."""
    _, h, w = image.shape
    # PIL's BILINEAR resize (antialiased when it shrinks), rounded back to 8 bits
    resized = F.interpolate(
        image[None].float(), (g.height, g.width), mode="bilinear", antialias=True
    )[0]
    resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    rows = reflect_index(g.height, max(g.height, h)).to(image.device)
    cols = reflect_index(g.width, max(g.width, w)).to(image.device)
    padded = resized[:, rows][:, :, cols]
    out_image = padded[:, g.top : g.top + h, g.left : g.left + w]
    out_maps = tuple(
        _place(_nearest(m, g.height, g.width), g, h, w, fill)
        for m, fill in zip(maps, fills, strict=True)
    )
    return out_image, out_maps


def _maps(views: tuple[Mixed, ...]) -> tuple[list[Tensor], list]:
    planes, fills = [views[0].ignore], [IGNORE_INDEX]
    for view in views:
        planes += [view.labels, view.conf]
        fills += [0, 0.0]
    return planes, fills


def _rebuild(images: Tensor, planes: list[Tensor], n_views: int) -> tuple[Mixed, ...]:
    ignore = planes[0]
    return tuple(
        Mixed(images, planes[1 + 2 * k], planes[2 + 2 * k], ignore) for k in range(n_views)
    )


def rescale_and_crop(
    views: tuple[Mixed, ...], scale: tuple[float, float], generator=None
) -> tuple[Mixed, ...]:
    """Step 1: each image rescaled by its own s ~ U(scale), padded and re-cropped to its size;
    the views' labels, confidences and the shared ignore map follow nearest, padding ignored."""
    images = to_uint8(views[0].images)
    n, _, h, w = images.shape
    planes, fills = _maps(views)
    out_images, out_planes = [], [[] for _ in planes]
    for i in range(n):
        g = draw_geometry(h, w, scale, generator)
        image, maps = rescale_one(images[i], tuple(p[i] for p in planes), tuple(fills), g)
        out_images.append(image)
        for k, m in enumerate(maps):
            out_planes[k].append(m)
    stacked = [torch.stack(p) for p in out_planes]
    return _rebuild(from_uint8(torch.stack(out_images)), stacked, len(views))


class JitterPlan(NamedTuple):
    """The random parameters of ReCo's jitter, blur and flip, one row per image."""

    jitter: Tensor  # (N,) bool, p 0.8
    order: Tensor  # (N, 4) ColorJitter's random order of its four adjustments
    factors: Tensor  # (N, 4) brightness, contrast, saturation, hue
    blur: Tensor  # (N,) bool, p 0.5
    sigma: Tensor  # (N,) U(0.15, 1.15)
    flip: Tensor  # (N,) bool, p 0.5


def jitter_plan(n: int, generator=None) -> JitterPlan:
    return JitterPlan(
        jitter=torch.rand(n, generator=generator) > 0.2,
        order=torch.stack([torch.randperm(4, generator=generator) for _ in range(n)]),
        factors=torch.stack([_uniform(n, lo, hi, generator) for lo, hi in RECO_JITTER_RANGES], 1),
        blur=torch.rand(n, generator=generator) > 0.5,
        sigma=_uniform(n, *RECO_BLUR_SIGMA, generator),
        flip=torch.rand(n, generator=generator) > 0.5,
    )


def apply_jitter_plan(views: tuple[Mixed, ...], plan: JitterPlan) -> tuple[Mixed, ...]:
    """Jitter, then blur, then flip (the public order), each image by its row of `plan`."""
    images = to_uint8(views[0].images)
    apply_to_rows(images, plan.jitter, color_jitter, plan.order, plan.factors)
    apply_to_rows(images, plan.blur, blur, plan.sigma)
    flip = plan.flip.to(images.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    planes, _ = _maps(views)
    planes = [torch.where(flip.view(-1, 1, 1), p.flip(-1), p) for p in planes]
    return _rebuild(from_uint8(images), planes, len(views))


def reco_jitter(views: tuple[Mixed, ...], generator=None) -> tuple[Mixed, ...]:
    """Step 3: ReCo's colour jitter, blur and flip of the mixed images (labels flipped too)."""
    return apply_jitter_plan(views, jitter_plan(views[0].images.shape[0], generator))


def _gather(tensor: Tensor) -> Tensor:
    """Every rank's `tensor` concatenated along the batch, in rank order (no gradient)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mix_within_batch(views: tuple[Mixed, ...], mode: str, generator=None) -> tuple[Mixed, ...]:
    """ReCo's mix of this batch alone: image i with image i + 1 (the last with the first)."""
    return reco_mix(views, mode, torch.arange(views[0].images.shape[0]).roll(-1), generator)


def mix_across_ranks(views: tuple[Mixed, ...], mode: str, generator=None) -> tuple[Mixed, ...]:
    """Step 2 as CSS's `generate_cut_gather_3`: the images, both views' labels and confidences
    and the ignore map of all ranks are gathered, image i of the gathered batch is mixed with
    image (i + 1) mod n, n the batch of ONE rank (the public index), and each rank keeps its own
    rows. So rank 0 mixes within its batch (as one process does) and every other rank's image k
    takes its partner from rank 0's image k + 1. Each rank draws the masks of the whole gathered
    batch, as the public loop. On one process: image i with image i + 1 of the batch."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if mode == "none" or world == 1:
        return mix_within_batch(views, mode, generator)
    n, rank = views[0].images.shape[0], dist.get_rank()
    images, ignore = _gather(views[0].images), _gather(views[0].ignore)
    gathered = tuple(Mixed(images, _gather(v.labels), _gather(v.conf), ignore) for v in views)
    partner = (torch.arange(world * n) + 1) % n
    mixed = reco_mix(gathered, mode, partner, generator)
    own = slice(rank * n, (rank + 1) * n)
    return tuple(Mixed(*(t[own] for t in m)) for m in mixed)
