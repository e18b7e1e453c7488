"""AugSeg's training step (ZhenZHAO/AugSeg train_semi.py, `train`, with the Pascal configs'
switches: use_cutmix, use_cutmix_adaptive, trigger probability 1, no extra weak forward), written
out again for the parity tests. The draws come in as arguments: the strong view (made by its
data workers), and for `cut_mix_label_adaptive` the permutation, the labeled and unlabeled boxes
of `rand_bbox` (rows and columns per image) and which images receive a labeled box."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from public_teacher_student import paste_box, public_thresholded_ce, public_update


def public_reliability(probs, num_classes):
    """The step's "confidence" per image: mean over H x W of (1 - H(p) / log C) * max p."""
    entropy = -torch.sum(probs * torch.log(probs + 1e-10), dim=1) / np.log(num_classes)
    return ((1.0 - entropy) * probs.max(1).values).mean(dim=[1, 2])


def public_label_adaptive_cutmix(images, labels, conf, x, y, perm, inject, box_l, box_u):
    """`cut_mix_label_adaptive` with its draws given. Stage 1 writes labeled boxes (ground truth,
    confidence 1) into a COPY of the unlabeled batch, for the images drawn to receive one; stage 2
    pastes that copy's image perm[i] into the ORIGINAL batch's image i inside box_u[i]."""
    copy_images, copy_labels, copy_conf = images.clone(), labels.clone(), conf.clone()
    ones = torch.ones_like(y)
    for i in range(len(images)):
        if inject[i]:
            paste_box(copy_images[i : i + 1], x, [perm[i]], [box_l[i]])
            paste_box(copy_labels[i : i + 1], y, [perm[i]], [box_l[i]])
            paste_box(copy_conf[i : i + 1], ones.to(conf.dtype), [perm[i]], [box_l[i]])
    images, labels, conf = images.clone(), labels.clone(), conf.clone()
    paste_box(images, copy_images, perm, box_u)
    paste_box(labels, copy_labels, perm, box_u)
    paste_box(conf, copy_conf, perm, box_u)
    return images, labels, conf


def public_augseg_step(
    student, teacher, optimizer, lrs, batch, strong, perm, inject, box_l, box_u, thresh, weight_u
):
    """One iteration up to the optimizer step (the EMA is `public_ema`). Returns the losses and
    the reliabilities (the public code compares them with its uniform draws)."""
    x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
    weak = batch["unlabeled"]["weak"]
    with torch.no_grad():
        teacher.eval()
        probs = F.softmax(teacher(weak), dim=1)
        conf, labels = torch.max(probs, dim=1)
        reliability = public_reliability(probs, probs.shape[1])
    student.train()
    strong, labels, conf = public_label_adaptive_cutmix(
        strong, labels, conf, x, y, perm, inject, box_l, box_u
    )
    pred = student(torch.cat((x, strong)))
    loss_x = F.cross_entropy(pred[: len(x)], y, ignore_index=255)
    loss_u = public_thresholded_ce(pred[len(x) :], labels, conf, thresh) * weight_u
    loss = loss_x + loss_u
    public_update(optimizer, loss, lrs)
    return {"loss": loss.detach(), "loss_x": loss_x.detach(), "reliability": reliability}
