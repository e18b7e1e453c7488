"""U2PL's CutMix mean-teacher loss as FST's semi-supervised code carries it (semi_seg/train_semi.py,
`loss_backward` with apply_aug cutmix and drop_percent): the loss the mean teacher (`style=u2pl`)
and FST share, and the checks of its options.

The teacher (eval mode) labels the weak view; one batch in `1 / cutmix_p` (one draw per batch)
is CutMixed, image i receiving a box of half the crop area from image i + 1, labels alike; the
student learns the labeled images and every pseudo-label, no confidence threshold, except the
`entropy_drop` fraction of highest teacher entropy (`losses.entropy_filtered_ce`). Where that
entropy comes from (`teacher_entropy`): `train_forward` (public) runs the teacher a second time,
in train mode, on the student's batch (labeled and mixed images; the forward also moves the
teacher's BatchNorm statistics, which `ema_buffers=own` leaves to it); `pseudo_labels` takes the
entropy of the eval-mode pseudo-label forward, mixed with the same box. Padded pixels (the data
module's ignore mask) are left out of the loss and of the entropy percentile.
"""

from __future__ import annotations

import torch
from torch import Tensor

from semiseg.augment import mixing
from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError
from semiseg.methods.losses import (
    IGNORE_INDEX,
    entropy,
    entropy_filtered_ce,
    pseudo_label_accuracy,
)

TEACHER_ENTROPY = ("train_forward", "pseudo_labels")


def checked_entropy_drop(value) -> float:
    """`method.entropy_drop` as a float, or a one-line error."""
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(
            f"method.entropy_drop={value}: a fraction in [0, 1) (0.2 is drop_percent 80)"
        )
    return float(value)


def check_teacher_options(teacher_entropy: str, average_buffers, own_forward: bool) -> None:
    """`method.teacher_entropy` is known, and `ema_buffers=own` has a train-mode teacher forward
    (`own_forward`) to move the teacher's BatchNorm statistics."""
    if teacher_entropy not in TEACHER_ENTROPY:
        raise ConfigError(
            f"method.teacher_entropy={teacher_entropy!r}: use train_forward (public) or "
            "pseudo_labels"
        )
    if average_buffers == "own" and not own_forward:
        raise ConfigError(
            "method.ema_buffers=own needs the teacher's own train-mode forward "
            "(method.teacher_entropy=train_forward), or its BatchNorm statistics never move: "
            "set method.ema_buffers=true"
        )


def u2pl_losses(
    module, batch: TrainBatch, cutmix_p: float, entropy_drop: float, teacher_entropy: str
) -> dict[str, Tensor]:
    """The loss dict of one U2PL step for a TeacherStudentModule `module` (its teacher, model,
    labeled_loss and weight_u). `cutmix_p=0` never mixes and draws nothing."""
    x, y = batch.labeled.image, batch.labeled.mask
    u = batch.unlabeled
    n_x, n_u = x.shape[0], u.weak.shape[0]

    # 1. The teacher's pseudo-labels of the weak view (eval mode, no gradient), their entropy.
    conf, labels, teacher_logits = module.teacher_pseudo_labels(u.weak)
    images, targets, uncertainty, ignore = u.weak, labels, entropy(teacher_logits), u.ignore

    # 2. One batch in 1 / cutmix_p: image i with image i + 1's pixels, pseudo-labels, entropy and
    #    padding inside a box of half its area.
    if cutmix_p > 0 and float(torch.rand(())) < cutmix_p:
        box = mixing.half_area_boxes(n_u, *images.shape[-2:], device=images.device)
        partner = (torch.arange(n_u, device=images.device) + 1) % n_u
        images, targets, uncertainty, ignore = (
            mixing.paste(box, t, t[partner]) for t in (images, targets, uncertainty, ignore)
        )

    # 3. The student on labeled and unlabeled images in one batch; with train_forward, the
    #    teacher in train mode on the same batch: the entropy of ITS output filters the loss.
    #    With an auxiliary head (model.aux_head, the public Cityscapes configs) the labeled loss
    #    is the public Criterion's: main + aux_weight x aux, on the labeled images only.
    both = torch.cat((x, images))
    if getattr(module, "with_aux", False):
        out = module.model(both, outputs=("logits", "aux"))
        logits = out["logits"]
        loss_x = module.labeled_loss(logits[:n_x], y)
        loss_x = loss_x + module.aux_weight * module.labeled_loss(out["aux"][:n_x], y)
    else:
        logits = module.model(both)
        loss_x = module.labeled_loss(logits[:n_x], y)
    if teacher_entropy == "train_forward":
        uncertainty = entropy(module.teacher.with_batch_statistics(both)[n_x:])
    loss_u, kept = entropy_filtered_ce(logits[n_x:], targets, uncertainty, ignore, entropy_drop)
    return {
        "loss": loss_x + module.weight_u * loss_u,
        "loss_x": loss_x,
        "loss_u": loss_u,
        "kept_ratio": kept.sum() / (ignore != IGNORE_INDEX).sum().clamp(min=1),
        "pseudo_acc": pseudo_label_accuracy(labels, conf, u.gt, 0.0),
    }
