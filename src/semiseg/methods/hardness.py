"""How hard each unlabeled image is for the model: iMAS's easiness and AugSeg's reliability.

Pure functions of batched predictions, run inside the training step (no gradient needed).
Conventions as in `losses.py`: labels, confidences and ignore masks (N, H, W), ignore = 255 on
padded pixels.

iMAS (imas/utils/loss_helper.py, `compute_ulb_hardness_all` and `meanIOU.evaluate`): the public
code calls the score "hardness", but it is high for EASY images (both networks agree and are
confident); the training step uses it as is. Read there:
- the IoU of each class between the two argmax maps, weighted by that class's pixel count in the
  map taken as ground truth, background weight 0, weights renormalised to sum 1; a class absent
  from the reference map weighs 0; a reference map of background only gives 0 (0/0 weights,
  then `nansum`);
- `r` = fraction of ALL pixels with max softmax >= tau (ties count as confident);
- e = (wIoU(pred=student, ref=teacher) * r_teacher + wIoU(pred=teacher, ref=student) * r_student)/2.
Since IoU is symmetric, the two wIoU differ only in whose class counts weigh.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg.methods.losses import IGNORE_INDEX


def class_weighted_iou(pred: Tensor, reference: Tensor, num_classes: int) -> Tensor:
    """Per image (N,): sum over classes c >= 1 of IoU_c(pred, reference) * w_c, where w_c is the
    share of class c among the reference's non-background pixels (0 if it has none)."""
    n = pred.shape[0]
    cells = num_classes * num_classes
    offset = torch.arange(n, device=pred.device).view(n, 1) * cells
    index = offset + (reference.reshape(n, -1) * num_classes + pred.reshape(n, -1))
    confusion = torch.bincount(index.flatten(), minlength=n * cells).view(n, num_classes, -1)
    confusion = confusion.float()
    intersection = confusion.diagonal(dim1=1, dim2=2)
    ref_count = confusion.sum(2)
    union = ref_count + confusion.sum(1) - intersection
    iou = intersection / union.clamp(min=1)  # a class in neither map: 0, and it weighs 0 anyway
    weight = ref_count.clone()
    weight[:, 0] = 0  # background does not count
    return (weight * iou).sum(1) / weight.sum(1).clamp(min=1)


def confident_ratio(conf: Tensor, tau: float) -> Tensor:
    """Per image: the fraction of pixels whose confidence reaches tau (padded ones included, as
    in the public code)."""
    return (conf >= tau).float().mean(dim=(1, 2))


def easiness(
    conf_s: Tensor, labels_s: Tensor, conf_t: Tensor, labels_t: Tensor, num_classes: int, tau: float
) -> Tensor:
    """iMAS's per-image score in [0, 1] from the student's and the teacher's (conf, argmax) maps
    of the weak view: high when they agree on the foreground classes and are confident."""
    wiou_t = class_weighted_iou(labels_s, labels_t, num_classes)  # weighed by the teacher's map
    wiou_s = class_weighted_iou(labels_t, labels_s, num_classes)  # weighed by the student's map
    return 0.5 * (wiou_t * confident_ratio(conf_t, tau) + wiou_s * confident_ratio(conf_s, tau))


def blend_views(strong: Tensor, weak: Tensor, easiness: Tensor) -> Tensor:
    """iMAS's per-image strong view: e * strong + (1 - e) * weak, so a hard image (small e) is
    augmented less (train_semi.py, `flag_augs_mixup_by_hard`)."""
    e = easiness.view(-1, 1, 1, 1).to(strong.dtype)
    return e * strong + (1 - e) * weak


def easiness_weighted_loss(
    logits: Tensor,
    labels: Tensor,
    conf: Tensor,
    ignore: Tensor,
    easiness: Tensor,
    tau: float,
    over_all_pixels: bool = True,
) -> Tensor:
    """mean_b( e_b * mean over image b's pixels of 1[conf >= tau] * CE ).

    As `compute_unsupervised_loss_by_threshold` with a hardness tensor: per image the average runs
    over ALL its H x W pixels, confident or not, padded or not (`over_all_pixels`, the public
    code, which has no padding mask: iMAS calls it with an all-zero ignore mask, so its padded
    pixels are trained on their confident pseudo-labels). Pixels with ignore == 255 add nothing;
    `over_all_pixels=False` also leaves them out of the count (the mean over non-padded pixels).
    """
    per_pixel = F.cross_entropy(logits, labels, reduction="none")
    not_padded = ignore != IGNORE_INDEX
    keep = (conf >= tau) & not_padded
    count = per_pixel[0].numel() if over_all_pixels else not_padded.sum(dim=(1, 2)).clamp(min=1)
    per_image = (per_pixel * keep).sum(dim=(1, 2)) / count
    return (easiness.to(per_image.dtype) * per_image).mean()


def reliability(logits: Tensor) -> Tensor:
    """AugSeg's per-image reliability (N,) from the teacher's logits on the weak view:
    mean over ALL pixels of (1 - H(p) / log C) * max p, H the entropy in nats
    (augseg train_semi.py, "obtain confidence"; the public code adds 1e-10 inside the log)."""
    probs = logits.detach().softmax(1)
    entropy = -(probs * torch.log(probs + 1e-10)).sum(1) / math.log(probs.shape[1])
    return ((1.0 - entropy) * probs.amax(1)).mean(dim=(1, 2))
