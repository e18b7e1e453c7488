"""iMAS's training step (ZhenZHAO/iMAS train_semi.py, `train`, with the Pascal configs' switches:
hardness_aware with class-weighted IoU ignoring the background, hardness v1, hardness-weighted
loss, CutMix triggered by the mean hardness, strong view blended by hardness, use_cutmix with
`cut_mix_by_hardness`), written out again for the parity tests. The draws come in as arguments:
the strong view (made by its data workers), the uniform number of the CutMix trigger and the
boxes of `rand_bbox_by_v` (rows and columns per image)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from public_teacher_student import (
    paste_box,
    public_pseudo_labels,
    public_thresholded_ce,
    public_update,
)


def public_weighted_iou(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    """`meanIOU.evaluate(flag_cls_weight=True, flag_ignore_background=True)` of one image: the
    confusion of (ref, pred), per-class IoU, weights = ref's class counts with background 0,
    normalised, nansum; cast to float32 as `obtain_meanIOU_for_each_instance_in_batch` does."""
    hist = np.bincount(
        num_classes * ref.flatten().astype(int) + pred.flatten(), minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        counts = np.array([(ref == c).sum() for c in range(num_classes)], dtype=np.float64)
        counts[0] = 0
        weights = counts / counts.sum()
        return np.float32(np.nansum(iou * weights))


def public_hardness(student_logits, teacher_logits, thresh):
    """`compute_ulb_hardness_all`, v1: (wIoU(stu vs tea) * ratio_tea + wIoU(tea vs stu) *
    ratio_stu) / 2, the ratios the share of pixels with max probability >= thresh."""
    num_classes = student_logits.shape[1]
    p_s, p_t = torch.softmax(student_logits, 1), torch.softmax(teacher_logits, 1)
    conf_s, lab_s = p_s.max(1)
    conf_t, lab_t = p_t.max(1)
    pairs = list(zip(lab_s.numpy(), lab_t.numpy(), strict=True))
    iou_t = torch.from_numpy(np.array([public_weighted_iou(s, t, num_classes) for s, t in pairs]))
    iou_s = torch.from_numpy(np.array([public_weighted_iou(t, s, num_classes) for s, t in pairs]))
    ratio_t = conf_t.ge(thresh).float().mean(dim=[1, 2])
    ratio_s = conf_s.ge(thresh).float().mean(dim=[1, 2])
    return (iou_t * ratio_t + iou_s * ratio_s) / 2


def public_cutmix_by_hardness(images, labels, conf, hardness: list, box):
    """`cut_mix_by_hardness` with the box given: image i takes the box of the image whose
    hardness rank mirrors its own (argsort[k] -> argsort[::-1][k])."""
    order = np.argsort(np.array(hardness))
    mirror = dict(zip(order, order[::-1], strict=True))
    partner = [mirror[i] for i in range(len(hardness))]
    out = images.clone(), labels.clone(), conf.clone()
    for mixed, source in zip(out, (images, labels, conf), strict=True):
        paste_box(mixed, source, partner, box)
    return out


def public_imas_step(
    student, teacher, optimizer, lrs, batch, strong, trigger_u, box, thresh, weight_u
):
    """One iteration up to the optimizer step (the EMA is `public_ema`). Returns the losses."""
    x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
    weak = batch["unlabeled"]["weak"]
    # 1. pseudo-labels and hardness: the student in eval mode, then the teacher
    with torch.no_grad():
        student.eval()
        logits_s = student(weak)
        teacher.eval()
        logits_t = teacher(weak)
        hardness = public_hardness(logits_s, logits_t, thresh)
        _, conf, labels = public_pseudo_labels(teacher, weak)
    student.train()
    values = hardness.numpy().tolist()
    # 3. the strong view blended towards the weak one by hardness
    ratio = torch.from_numpy(np.array(values).reshape((-1, 1, 1, 1)).astype(np.float32))
    strong = strong * ratio + weak * (1.0 - ratio)
    # 4. CutMix of the WEAK views with probability mean(hardness)
    cutmix = trigger_u < np.mean(values)
    views = [x, weak]
    if cutmix:
        cm_images, cm_labels, cm_conf = public_cutmix_by_hardness(weak, labels, conf, values, box)
        views.append(cm_images)
    views.append(strong)
    # 5. one forward of everything
    pred = student(torch.cat(views))
    pred_x = pred[: len(x)]
    chunks = pred[len(x) :].chunk(len(views) - 1)
    loss_x = F.cross_entropy(pred_x, y, ignore_index=255)
    loss_u = public_thresholded_ce(chunks[-1], labels, conf, thresh, hardness)
    if cutmix:
        loss_cm = public_thresholded_ce(chunks[1], cm_labels, cm_conf, thresh, hardness)
        loss_u = (loss_u + loss_cm) * 0.5
    loss_u = loss_u * weight_u
    loss = loss_x + loss_u
    public_update(optimizer, loss, lrs)
    return {"loss": loss.detach(), "loss_x": loss_x.detach(), "cutmix": cutmix}
