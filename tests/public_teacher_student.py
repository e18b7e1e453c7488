"""The U2PL code base's mean-teacher step as iMAS and AugSeg carry it (their train_semi.py, `train`),
written out again for the parity tests: the parts the two share. Randomness is never drawn here:
the strong view, the CutMix decision and the boxes come in as arguments, so a test can hand over
what semiseg drew. The networks return one map of logits at the input size (the public models
return (pred, aux) upsampled; there is no aux head in these recipes' Pascal runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def public_pseudo_labels(teacher, weak):
    """Teacher in eval mode, no gradient: softmax, then (max probability, argmax)."""
    teacher.eval()
    with torch.no_grad():
        probs = F.softmax(teacher(weak), dim=1)
    conf, labels = torch.max(probs, dim=1)
    return probs, conf, labels


def public_thresholded_ce(pred, target, conf, thresh, per_image_weight=None):
    """`compute_unsupervised_loss_by_threshold`: targets below the threshold (or 255) set to 255,
    CE with reduction none (0 on those pixels), then the mean over every pixel; with a weight per
    image, the mean over each image's H x W, times its weight, then the mean over the batch."""
    target = target.clone()
    keep = conf.ge(thresh) & (target != 255)
    target[~keep] = 255
    loss = F.cross_entropy(pred, target, ignore_index=255, reduction="none")
    if per_image_weight is None:
        return loss.mean()
    return (loss.mean(dim=[1, 2]) * per_image_weight).mean()


def public_ema(teacher, student, epoch, i_iter, iters_per_epoch, alpha, sup_only_epoch=0):
    """After the optimizer step: decay 0 up to and including epoch `sup_only_epoch`, then
    min(1 - 1/(i_iter - iters_per_epoch * sup_only_epoch + 1), alpha); parameters and every
    buffer averaged (the float buffers: the public line also turns the integer counter into a
    float, which semiseg copies instead, see methods/teacher.py)."""
    if epoch > sup_only_epoch:
        decay = min(1 - 1 / (i_iter - iters_per_epoch * sup_only_epoch + 1), alpha)
    else:
        decay = 0.0
    with torch.no_grad():
        for p_s, p_t in zip(student.parameters(), teacher.parameters(), strict=True):
            p_t.data = p_t.data * decay + p_s.data * (1 - decay)
        for b_s, b_t in zip(student.buffers(), teacher.buffers(), strict=True):
            if b_t.is_floating_point():
                b_t.data = b_t.data * decay + b_s.data * (1 - decay)
            else:
                b_t.data = b_s.data.clone()
    return decay


def public_update(optimizer, loss, lrs):
    """zero_grad, backward, step at the given learning rate of each parameter group."""
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def paste_box(target, source, index, box):
    """target[i, ..., rows, cols] = source[index[i], ..., rows, cols] for every image, the box
    given as (row start, row end, col start, col end) per image; written in place."""
    for i, (r0, r1, c0, c1) in enumerate(box):
        target[i, ..., r0:r1, c0:c1] = source[index[i], ..., r0:r1, c0:c1]
