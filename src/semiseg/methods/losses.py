"""Loss functions and pseudo-label helpers: pure functions of logits and batch tensors.

Conventions: logits (N, C, H, W); labels, confidences and ignore masks (N, H, W); ignore masks
hold 255 on padded pixels and 0 elsewhere; CutMix boxes hold 1 inside the box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255


def supervised_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over labeled pixels; 255 is ignored."""
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """The soft Dice loss of the public UniMatch medical code, over the whole batch: per class c,
    1 - (2 sum(p_c t_c) + s) / (sum(p_c^2) + sum(t_c^2) + s) with p the softmax and t the one-hot
    target, averaged over the classes (background included); 255 is ignored."""
    probs = logits.float().softmax(dim=1)
    keep = target != IGNORE_INDEX
    num_classes = probs.shape[1]
    probs = probs.permute(0, 2, 3, 1)[keep]  # (pixels, C)
    onehot = F.one_hot(target[keep].long(), num_classes).float()
    inter = (probs * onehot).sum(0)
    denom = (probs * probs).sum(0) + onehot.sum(0)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def confident_dice_loss(
    logits: Tensor, labels: Tensor, conf: Tensor, ignore: Tensor, tau: float
) -> Tensor:
    """The unlabeled loss of the public UniMatch medical code: `dice_loss` of the softmax against
    the pseudo-labels over the pixels whose confidence reaches tau (its `ignore=(conf < thresh)`),
    padded pixels (ignore == 255) left out too; soft Dice per class over the whole batch, averaged
    over the classes."""
    kept = (conf >= tau) & (ignore != IGNORE_INDEX)
    return dice_loss(logits, labels.masked_fill(~kept, IGNORE_INDEX))


def ce_dice(logits: Tensor, target: Tensor) -> Tensor:
    """(CE + Dice) / 2: the labeled loss of the public UniMatch ACDC code."""
    return (supervised_ce(logits, target) + dice_loss(logits, target)) / 2


def ohem_ce(logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 200_000) -> Tensor:
    """Online hard example mining cross-entropy (the reference's Cityscapes labeled loss).

    Keeps the pixels whose probability for their true class is at most `threshold`, where the
    threshold is `thresh`, raised to the `min_kept`-th smallest true-class probability when fewer
    than `min_kept` pixels would pass. With fewer than `min_kept` labeled pixels in the batch,
    every labeled pixel is kept (plain cross-entropy), as in the reference.
    """
    valid = target != IGNORE_INDEX
    num_valid = int(valid.sum())
    if num_valid == 0 or num_valid < min_kept:
        return supervised_ce(logits, target)
    with torch.no_grad():
        probs = logits.detach().softmax(1)
        safe_target = target.masked_fill(~valid, 0)
        true_prob = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        true_prob = true_prob.masked_fill(~valid, 1.0)
        threshold = torch.tensor(thresh, dtype=true_prob.dtype, device=true_prob.device)
        if min_kept > 0:
            kth = true_prob.flatten().kthvalue(min(min_kept, true_prob.numel())).values
            threshold = torch.maximum(threshold, kth)
        kept = valid & (true_prob <= threshold)
    return supervised_ce(logits, target.masked_fill(~kept, IGNORE_INDEX))


def pseudo_labels(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence and class of the softmax maximum, without gradient."""
    conf, labels = logits.detach().softmax(1).max(1)
    return conf, labels


def consistency_loss(
    logits: Tensor,
    labels: Tensor,
    conf: Tensor,
    ignore: Tensor,
    tau: float,
    over_all_pixels: bool = False,
) -> Tensor:
    """Cross-entropy on confident pseudo-labels, averaged over ALL non-padded pixels.

    The reference divides by the count of non-padded pixels, not of confident ones, so the loss
    shrinks when few pixels are confident. Padded pixels (ignore == 255) never count.
    `over_all_pixels`: divide by every pixel of the batch instead, the ignored ones included
    (they still add nothing above): AugSeg's `compute_unsupervised_loss_by_threshold`, whose
    `loss.mean()` runs over N x H x W with a 0 wherever the target is 255.
    """
    per_pixel = F.cross_entropy(logits, labels, reduction="none")
    not_padded = ignore != IGNORE_INDEX
    keep = (conf >= tau) & not_padded
    count = per_pixel.numel() if over_all_pixels else not_padded.sum().clamp(min=1)
    return (per_pixel * keep).sum() / count


def mask_ratio(conf: Tensor, ignore: Tensor, tau: float) -> Tensor:
    """Fraction of non-padded unlabeled pixels whose pseudo-label passes the threshold."""
    not_padded = ignore != IGNORE_INDEX
    return ((conf >= tau) & not_padded).sum() / not_padded.sum().clamp(min=1)


def pseudo_label_accuracy(labels: Tensor, conf: Tensor, gt: Tensor, tau: float) -> Tensor:
    """Accuracy of the confident pseudo-labels against ground truth (where it is known).

    NaN when no pixel is both confident and labeled (e.g. unlabeled images without masks).
    """
    scored = (conf >= tau) & (gt != IGNORE_INDEX)
    if not scored.any():
        return torch.tensor(float("nan"), device=labels.device)
    return (labels[scored] == gt[scored]).float().mean()


def entropy(logits: Tensor) -> Tensor:
    """Per-pixel entropy of the softmax, -sum_c p log(p + 1e-10), without gradient (the U2PL
    formula FST's `compute_unsupervised_loss` uses; the 1e-10 keeps p = 0 finite)."""
    p = logits.detach().float().softmax(1)
    return -(p * torch.log(p + 1e-10)).sum(1)


def percentile(values: Tensor, q: float) -> Tensor:
    """numpy's default (linear) percentile of a 1-D tensor, q in [0, 1]: the sorted values
    interpolated at position q * (n - 1)."""
    ordered = values.flatten().sort().values
    position = q * (ordered.numel() - 1)
    lo = int(position)
    hi = min(lo + 1, ordered.numel() - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def entropy_filtered_ce(
    logits: Tensor, labels: Tensor, pixel_entropy: Tensor, ignore: Tensor, drop: float
) -> tuple[Tensor, Tensor]:
    """FST's unsupervised loss (U2PL's `compute_unsupervised_loss`): cross-entropy on the
    pseudo-labels, without the `drop` fraction of pixels with the highest teacher entropy.

    Public formula, on the non-padded pixels (its pseudo-labels have no padding): threshold =
    np.percentile(entropy, 100 * (1 - drop)) (linear); pixels with entropy >= threshold are
    dropped, ties included, so slightly more than `drop` may go; the mean cross-entropy over the
    kept pixels is multiplied by (pixels / kept pixels), i.e. up-weighted by 1 / keep ratio.
    drop = 0 keeps every pixel (the public default, percentile 100, would still drop the
    maximum-entropy pixels). Where nothing is kept (every entropy tied) the loss is 0; the public
    code divides by zero there. Returns (loss, kept mask).
    """
    valid = ignore != IGNORE_INDEX
    kept = valid
    if drop > 0 and valid.any():
        kept = valid & (pixel_entropy < percentile(pixel_entropy[valid], 1.0 - drop))
    n_kept = kept.sum()
    if n_kept == 0:
        return logits.sum() * 0.0, kept
    ce = F.cross_entropy(logits, labels.masked_fill(~kept, IGNORE_INDEX), ignore_index=IGNORE_INDEX)
    return ce * (valid.sum() / n_kept), kept
