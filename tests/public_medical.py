"""The public UniMatch medical code's Dice loss (more-scenarios/medical/util/utils.py, `DiceLoss`
with `ignore`) and its unlabeled use in unimatch.py, written out again for the parity tests."""

from __future__ import annotations

import torch


def public_dice_loss(probs, target, n_classes, ignore=None):
    """`DiceLoss(n_classes)(probs, target.unsqueeze(1).float(), ignore=...)`: target one-hot per
    class; per class 1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5) over the pixels where
    ignore != 1 (all pixels without ignore), summed over the classes / n_classes."""
    target = target.unsqueeze(1).float()
    onehot = torch.cat([target == c for c in range(n_classes)], dim=1).float()
    if ignore is None:
        ignore = torch.zeros_like(probs[:, 0])
    total = 0.0
    for c in range(n_classes):
        score, t = probs[:, c][ignore != 1], onehot[:, c][ignore != 1]
        dice = (2 * torch.sum(score * t) + 1e-5) / (
            torch.sum(score * score) + torch.sum(t * t) + 1e-5
        )
        total = total + (1 - dice)
    return total / n_classes


def public_unlabeled_dice(pred, pseudo_labels, conf, conf_thresh):
    """unimatch.py's `loss_u_s1`: the Dice of the softmax against the (CutMixed) pseudo-labels,
    ignoring the pixels whose confidence is below conf_thresh."""
    return public_dice_loss(
        pred.softmax(dim=1), pseudo_labels, pred.shape[1], ignore=(conf < conf_thresh).float()
    )
