"""U2PL's CutMix mean teacher, as the FST code carries it (usr922/FST semi_seg/train_semi.py,
`loss_backward` and the step around it without `fst: True`, with apply_aug cutmix and no
contrastive loss), written out again for the parity tests. The draws come in as arguments:
whether this batch is CutMixed (its `np.random.uniform(0, 1) < 0.5`) and the box of
`generate_cutout_mask` per image (rows and columns)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def public_entropy_filtered_ce(predict, target, percent, teacher_logits):
    """`compute_unsupervised_loss`: teacher entropy; pixels at or above its `percent`-th
    percentile (numpy, over the non-255 pixels) set to 255; CE over the rest, scaled by
    (all pixels / kept pixels)."""
    n, _, h, w = predict.shape
    target = target.clone()
    with torch.no_grad():
        prob = torch.softmax(teacher_logits, dim=1)
        entropy = -torch.sum(prob * torch.log(prob + 1e-10), dim=1)
        thresh = np.percentile(entropy[target != 255].numpy().flatten(), percent)
        target[entropy.ge(thresh) & (target != 255)] = 255
        weight = n * h * w / torch.sum(target != 255)
    return weight * F.cross_entropy(predict, target, ignore_index=255)


def public_cutmix_next(images, labels, boxes):
    """`generate_unsup_data(mode="cutmix")`: image i keeps its pixels outside its box and takes
    image (i + 1) % n's inside it; labels alike."""
    n = len(images)
    out_images, out_labels = images.clone(), labels.clone()
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        j = (i + 1) % n
        out_images[i, :, r0:r1, c0:c1] = images[j, :, r0:r1, c0:c1]
        out_labels[i, r0:r1, c0:c1] = labels[j, r0:r1, c0:c1]
    return out_images, out_labels


def public_u2pl_step(
    student, teacher, optimizer, lrs, batch, epoch, i_iter, mixed, boxes, alpha, percent=80
):
    """One iteration: the first-epoch parameter reset, the loss, the step, the EMA of the
    parameters (the buffers are the teacher's own). Returns the losses."""
    x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
    weak = batch["unlabeled"]["weak"]
    if epoch == 0:  # sup_only_epoch 0: the teacher's parameters ARE the student's tensors
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.data = s.data
    teacher.eval()
    with torch.no_grad():
        labels = torch.softmax(teacher(weak), dim=1).max(1).indices
    images = weak
    if mixed:
        images, labels = public_cutmix_next(weak, labels, boxes)
    both = torch.cat((x, images))
    pred = student(both)
    loss_x = F.cross_entropy(pred[: len(x)], y, ignore_index=255)
    teacher.train()
    with torch.no_grad():
        teacher_pred = teacher(both)[len(x) :]
    loss_u = public_entropy_filtered_ce(pred[len(x) :], labels, percent, teacher_pred)
    loss = loss_x + loss_u
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    decay = min(1 - 1 / (i_iter + 1), alpha)
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.data = decay * t.data + (1 - decay) * s.data
    return {"loss": loss.detach(), "loss_x": loss_x.detach()}


def public_fst_iteration(
    student, teacher, optimizer, lrs, batch, epoch, i_iter, alpha, boxes, k=3, percent=80
):
    """One iteration of train_semi.py with `fst: True` (k look-ahead steps; k=0: the step
    without it). `boxes` yields, per loss, None (not CutMixed) or the per-image boxes. In epoch 0
    (sup_only_epoch 0) every loss first points the teacher's parameters at the student's tensors
    (`t.data = s.data`, no copy: the student's optimizer step moves the teacher too, until an EMA
    update writes new tensors); the teacher's buffers are its own. Returns the real loss."""
    x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
    weak = batch["unlabeled"]["weak"]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr

    @torch.no_grad()
    def update_ema():
        decay = min(1 - 1 / (i_iter + 1), alpha)
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.data = decay * t.data + (1 - decay) * s.data

    def loss_backward():
        if epoch == 0:
            with torch.no_grad():
                for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                    t.data = s.data
        teacher.eval()
        with torch.no_grad():
            labels = torch.softmax(teacher(weak), dim=1).max(1).indices
        images, box = weak, next(boxes)
        if box is not None:
            images, labels = public_cutmix_next(weak, labels, box)
        both = torch.cat((x, images))
        pred = student(both)
        loss_x = F.cross_entropy(pred[: len(x)], y, ignore_index=255)
        teacher.train()
        with torch.no_grad():
            teacher_pred = teacher(both)[len(x) :]
        loss = loss_x + public_entropy_filtered_ce(pred[len(x) :], labels, percent, teacher_pred)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    if k == 0:
        loss = loss_backward()
        update_ema()
        return loss
    saved = [p.data.clone() for p in student.parameters()]  # record_model
    for _ in range(k):
        update_ema()
        loss_backward()
    update_ema()
    with torch.no_grad():  # restore_model: the parameters only
        for p, s in zip(student.parameters(), saved, strict=True):
            p.data[:] = s
    loss = loss_backward()
    update_ema()
    return loss
