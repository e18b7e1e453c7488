"""CutMix on whole batches inside the training step: box masks, iMAS's hard CutMix, AugSeg's
label-injecting CutMix and ReCo's CutMix, ClassMix and CutOut (used by CSS). Each returns new tensors (the inputs are never written) holding the mixed
images AND their labels, confidences and ignore masks (conventions of `methods/losses.py`).

Random numbers are drawn on the CPU (a few per image) from `generator` (torch's global one if
None), so a seeded generator gives the same boxes on any device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from semiseg.data.transforms import IGNORE as IGNORE_INDEX


def paste(box: Tensor, target: Tensor, source: Tensor) -> Tensor:
    """`target` with `source` inside the CutMix box (1 = inside); works for images (N, 3, H, W)
    and for per-pixel maps (N, H, W). Returns a new tensor; the inputs are untouched."""
    inside = box.bool()
    if target.dim() == 4:
        inside = inside.unsqueeze(1)
    return torch.where(inside, source, target)


class Mixed(NamedTuple):
    images: Tensor  # (N, 3, H, W)
    labels: Tensor  # (N, H, W) class indices, valid where ignore != 255
    conf: Tensor  # (N, H, W)
    ignore: Tensor  # (N, H, W) 255 = not trained on


def box_masks(
    top: Tensor, bottom: Tensor, left: Tensor, right: Tensor, height: int, width: int, device=None
) -> Tensor:
    """(N, H, W) bool, True in rows [top, bottom) and columns [left, right) of each image; the
    bounds may lie outside the image (the box is clipped)."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top.to(device).view(-1, 1)) & (rows < bottom.to(device).view(-1, 1))
    in_cols = (cols >= left.to(device).view(-1, 1)) & (cols < right.to(device).view(-1, 1))
    return in_rows[:, :, None] & in_cols[:, None, :]


def unimatch_boxes(n: int, size: int, p: float = 0.5, generator=None, device=None) -> Tensor:
    """The batched twin of `data.transforms.cutmix_box` (UniMatch's sampler), one box per image
    with probability p: area ~ U(0.02, 0.4) * size^2 drawn once, then aspect ratio
    ~ U(0.3, 1/0.3) and top-left corner redrawn until the box fits. The redraws run for all
    images still waiting at once."""
    active = torch.rand(n, generator=generator) < p
    area = (0.02 + 0.38 * torch.rand(n, generator=generator, dtype=torch.float64)) * size * size
    top, left, bh, bw = (torch.zeros(n, dtype=torch.long) for _ in range(4))
    waiting = active.clone()
    while waiting.any():
        index = waiting.nonzero().flatten()
        k = len(index)
        ratio = 0.3 + (1 / 0.3 - 0.3) * torch.rand(k, generator=generator, dtype=torch.float64)
        w = torch.sqrt(area[index] / ratio).long()
        h = torch.sqrt(area[index] * ratio).long()
        x = torch.randint(size, (k,), generator=generator)
        y = torch.randint(size, (k,), generator=generator)
        fits = (x + w <= size) & (y + h <= size)
        done = index[fits]
        top[done], left[done], bh[done], bw[done] = y[fits], x[fits], h[fits], w[fits]
        waiting[done] = False
    return box_masks(top, top + bh, left, left + bw, size, size, device)


def centred_boxes(
    n: int, height: int, width: int, side: float, margin: int, generator=None, device=None
) -> Tensor:
    """The box of iMAS's and AugSeg's `rand_bbox`: per batch, int(H * side) by int(W * side),
    spanning centre +- half of that (so an odd size loses a pixel); per image, the centre
    drawn in [H // margin, H) x [W // margin, W); clipped at the image border.
    margin: 8 in `rand_bbox` (AugSeg), 16 in `rand_bbox_by_v` (iMAS)."""
    half_h, half_w = int(height * side) // 2, int(width * side) // 2
    cy = torch.randint(height // margin, height, (n,), generator=generator)
    cx = torch.randint(width // margin, width, (n,), generator=generator)
    return box_masks(cy - half_h, cy + half_h, cx - half_w, cx + half_w, height, width, device)


def cutmix_with(batch: Mixed, box: Tensor, partner: Tensor) -> Mixed:
    """Image i with image partner[i]'s pixels, labels, confidences and ignore inside box i."""
    partner = partner.to(batch.images.device)
    return Mixed(*(paste(box, t, t[partner]) for t in batch))


# iMAS (imas/dataset/cutmix_tensor.py, `cut_mix_by_hardness`, and its call in train_semi.py)


def hardness_partners(easiness: Tensor) -> Tensor:
    """The k-th hardest image is paired with the k-th easiest, both ways (an involution; with an
    odd batch the median image is its own partner). Ties keep batch order (a stable sort; the
    public `np.argsort` does not promise an order for ties)."""
    order = torch.sort(easiness, stable=True).indices  # hardest (smallest e) first
    partner = torch.empty_like(order)
    partner[order] = order.flip(0)
    return partner


def hard_cutmix_triggered(easiness: Tensor, generator=None) -> bool:
    """iMAS mixes a batch with probability mean(e) (`flag_cmix_trigger_by_hard`)."""
    return float(torch.rand((), generator=generator)) < float(easiness.mean())


def hard_cutmix(batch: Mixed, easiness: Tensor, side_range=(0.1, 0.9), generator=None) -> Mixed:
    """iMAS's hard CutMix: one side v ~ U(side_range) per batch (`use_cutmix_range`, [0.1, 0.9]
    in its configs); each image receives a box of its hardness partner. The public code mixes
    the WEAK views with the teacher's pseudo-labels and confidences, not the strong views."""
    n, _, h, w = batch.images.shape
    lo, hi = side_range
    side = lo + (hi - lo) * float(torch.rand((), generator=generator))
    box = centred_boxes(n, h, w, side, 16, generator, batch.images.device)
    return cutmix_with(batch, box, hardness_partners(easiness))


# AugSeg (augseg/dataset/augs_ALIA.py, `cut_mix_label_adaptive`)


def beta_whole(a: int, b: int, generator=None) -> float:
    """A Beta(a, b) draw for whole a, b: the a-th smallest of a + b - 1 uniforms (torch's Beta
    sampler takes no generator)."""
    uniforms = torch.rand(a + b - 1, generator=generator, dtype=torch.float64)
    return float(uniforms.sort().values[a - 1])


def inject_then_mix(
    batch: Mixed,
    labeled_images: Tensor,
    labeled_masks: Tensor,
    perm: Tensor,
    labeled_box: Tensor,
    inject: Tensor,
    unlabeled_box: Tensor,
) -> Mixed:
    """AugSeg's two stages with given draws.

    Stage 1: where inject[i], unlabeled image i receives labeled image perm[i] inside
    labeled_box[i], with its ground truth and confidence 1 (a labeled pixel marked 255 keeps
    ignore 255). Stage 2: image i receives the STAGE-1 image perm[i] inside unlabeled_box[i].
    As in the public code, stage 2 writes into the original batch, so image i's own stage-1 box
    survives only where image perm[i] happens to cover it: the labeled pixels that reach image i
    are those of labeled image perm[perm[i]], inside labeled_box[perm[i]] & unlabeled_box[i].
    """
    device = batch.images.device
    perm = perm.to(device)
    padded = labeled_masks == IGNORE_INDEX
    labeled = Mixed(
        labeled_images,
        labeled_masks.masked_fill(padded, 0).to(batch.labels.dtype),
        torch.ones_like(labeled_masks, dtype=batch.conf.dtype),
        torch.where(padded, IGNORE_INDEX, 0).to(batch.ignore.dtype),
    )
    inside = labeled_box & inject.to(device).view(-1, 1, 1)
    stage1 = Mixed(*(paste(inside, t, s[perm]) for t, s in zip(batch, labeled, strict=True)))
    return Mixed(*(paste(unlabeled_box, t, s[perm]) for t, s in zip(batch, stage1, strict=True)))


def label_injecting_cutmix(
    batch: Mixed,
    labeled_images: Tensor,
    labeled_masks: Tensor,
    reliability: Tensor,
    generator=None,
) -> Mixed:
    """AugSeg's adaptive CutMix of the unlabeled (strong) views: one permutation, per batch
    lambda_l ~ Beta(8, 2) and lambda_u ~ Beta(4, 4), boxes of side sqrt(1 - lambda) * side;
    labeled injection into image i with probability 1 - reliability[i]; see `inject_then_mix`.
    The labeled batch must have the unlabeled batch's shape (the public code asserts it)."""
    if labeled_images.shape != batch.images.shape:
        raise ValueError(
            f"labeled images {tuple(labeled_images.shape)} and unlabeled images "
            f"{tuple(batch.images.shape)} must have the same shape for label-injecting CutMix"
        )
    n, _, h, w = batch.images.shape
    device = batch.images.device
    perm = torch.randperm(n, generator=generator)
    side_l = math.sqrt(1 - beta_whole(8, 2, generator))
    side_u = math.sqrt(1 - beta_whole(4, 4, generator))
    labeled_box = centred_boxes(n, h, w, side_l, 8, generator, device)
    unlabeled_box = centred_boxes(n, h, w, side_u, 8, generator, device)
    inject = torch.rand(n, generator=generator, dtype=torch.float64) > reliability.detach().cpu()
    return inject_then_mix(
        batch, labeled_images, labeled_masks, perm, labeled_box, inject, unlabeled_box
    )


# FST's semi-supervised code (the U2PL code base: semi_seg/fst/dataset/augmentation.py,
# `generate_cutout_mask` and `generate_unsup_data(mode="cutmix")`); ReCo's (CSS) is the same box


def half_area_boxes(n: int, height: int, width: int, generator=None, device=None) -> Tensor:
    """U2PL's CutMix box, one per image: area H * W / 2; width w uniform in
    [W // 2 + 1, W - 1] (numpy's `randint(W / 2 + 1, W)`, whose float low is truncated),
    height round(H * W / 2 / w) (half to even, as `np.round`), top-left corner uniform where the
    box fits. Its caller mixes image i with image (i + 1) mod n inside the box."""
    w = torch.randint(width // 2 + 1, width, (n,), generator=generator)
    h = torch.round(height * width / 2 / w.double()).long()
    left = (torch.rand(n, generator=generator, dtype=torch.float64) * (width - w + 1)).long()
    top = (torch.rand(n, generator=generator, dtype=torch.float64) * (height - h + 1)).long()
    return box_masks(top, top + h, left, left + w, height, width, device)


# ReCo's mixing (reco/module_list.py `generate_cut`, copied by CSS as `generate_cut_gather*`); its
# CutMix and CutOut box is U2PL's `generate_cutout_mask(ratio=2)`: `half_area_boxes` above.


def cutout(batch: Mixed, box: Tensor) -> Mixed:
    """ReCo's CutOut: inside the box the image is 0 (the mean colour, after normalisation), the
    label ignored and the confidence 0, as the public code writes -1, 0 and 0 there."""
    inside = box.bool().to(batch.images.device)
    return Mixed(
        batch.images.masked_fill(inside.unsqueeze(1), 0.0),
        batch.labels,
        batch.conf.masked_fill(inside, 0.0),
        batch.ignore.masked_fill(inside, IGNORE_INDEX),
    )


def classmix_masks(labels: Tensor, ignore: Tensor, partner: Tensor, generator=None) -> Tensor:
    """ClassMix as ReCo's `generate_class_mask`: of the label values present in image
    partner[i] (ignored pixels count as one more value, as ReCo's -1 does), floor(K / 2) drawn at
    random; True where partner[i] holds one of them. With `cutmix_with(batch, mask, partner)`,
    image i receives those classes of its partner: ReCo pastes image i's classes onto image
    i + 1 instead, the same pairs seen from the other side."""
    keys = labels.masked_fill(ignore == IGNORE_INDEX, IGNORE_INDEX)[partner.to(labels.device)]
    masks = torch.zeros_like(keys, dtype=torch.bool)
    for i, key in enumerate(keys):
        values = torch.unique(key)
        order = torch.randperm(len(values), generator=generator).to(values.device)
        chosen = values[order[: len(values) // 2]]
        masks[i] = torch.isin(key, chosen)
    return masks


def classmix_with(batch: Mixed, partner: Tensor, generator=None) -> Mixed:
    """Image i with the pixels of half the classes of image partner[i] (see `classmix_masks`)."""
    return cutmix_with(
        batch, classmix_masks(batch.labels, batch.ignore, partner, generator), partner
    )


def reco_mix(
    batches: tuple[Mixed, ...], mode: str, partner: Tensor, generator=None
) -> tuple[Mixed, ...]:
    """One ReCo mixing (`cutmix`, `classmix`, `cutout` or `none`) applied alike to several views
    of the same images (CSS carries the logit- and the representation-space labels); the
    ClassMix classes are the first batch's labels."""
    first = batches[0]
    n, _, h, w = first.images.shape
    device = first.images.device
    if mode == "none":
        return batches
    if mode == "cutout":
        box = half_area_boxes(n, h, w, generator, device)
        return tuple(cutout(b, box) for b in batches)
    if mode == "cutmix":
        mask = half_area_boxes(n, h, w, generator, device)
    elif mode == "classmix":
        mask = classmix_masks(first.labels, first.ignore, partner, generator)
    else:
        raise ValueError(f"mix mode '{mode}' is unknown: use cutmix, classmix, cutout or none")
    return tuple(cutmix_with(b, mask, partner) for b in batches)
