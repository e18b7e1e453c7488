"""Mean teacher with CutMix, the teacher-student family's baseline.

`style=u2pl` (default): U2PL's CutMix mean teacher, as the FST code base carries it
(semi_seg/train_semi.py without `fst: True`, apply_aug cutmix, drop_percent 80) and iMAS and AugSeg
build on. The EMA teacher (eval mode) labels the weak view; one batch in two (one draw per batch)
is CutMixed, image i receiving a box of half the crop area from image i + 1 with its labels; no
colour augmentation; the student learns every pseudo-label, no confidence threshold, except the
`entropy_drop` fraction (0.2) of highest teacher entropy (`losses.entropy_filtered_ce`).

`style=unimatch`: the UniMatch-style mean teacher semiseg had first: the data workers' strong
view (colour jitter, grayscale, blur) and UniMatch's CutMix box, image i receiving the box of
image n - 1 - i, thresholded cross-entropy (tau) over the non-padded pixels.

The teacher as public: `teacher_entropy=train_forward` runs it a second time, in train mode, on
the student's batch, and the entropy of that output filters the loss (`pseudo_labels`: the
entropy of the pseudo-label forward, mixed with the same box); the loss is
`u2pl_step.u2pl_losses`, shared with FST; with
`ema_buffers=own` the EMA covers parameters only and the teacher's BatchNorm statistics are those
of its own train-mode forwards; `ema_warmup=epoch` copies the student for the first epoch: U2PL points the teacher's
parameters at the student's tensors (`t.data = s.data`) before every loss of epoch 0, so the
student's optimizer step moves the teacher too and every update of that epoch, the last one
included, leaves teacher = student.
Differences from the public U2PL step (docs/methods.md): padded pixels (the data module's ignore
mask) are left out of the loss and of the entropy percentile.
"""

from __future__ import annotations

from typing import Any

import torch

from semiseg.augment.mixing import Mixed, cutmix_with
from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError
from semiseg.methods.losses import consistency_loss, mask_ratio, pseudo_label_accuracy
from semiseg.methods.teacher_student import TeacherStudentModule
from semiseg.methods.u2pl_step import check_teacher_options, checked_entropy_drop, u2pl_losses


class MeanTeacher(TeacherStudentModule):
    def __init__(
        self,
        *args,
        style: str = "u2pl",
        entropy_drop: float = 0.2,
        cutmix_p: float = 0.5,
        teacher_entropy: str = "train_forward",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if style not in ("u2pl", "unimatch"):
            raise ConfigError(f"method.style={style!r}: use u2pl (the public one) or unimatch")
        self.teacher_entropy = teacher_entropy
        own_forward = style == "u2pl" and teacher_entropy == "train_forward"
        check_teacher_options(teacher_entropy, self.teacher.average_buffers, own_forward)
        self.style, self.cutmix_p = style, cutmix_p
        self.entropy_drop = checked_entropy_drop(entropy_drop)

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        # unimatch: the data workers' strong view and CutMix box; u2pl: the weak view only
        strong = 1 if method_cfg.get("style", "u2pl") == "unimatch" else 0
        return {"unlabeled": True, "num_strong": strong, "mix": None}

    def training_losses(self, batch: TrainBatch):
        if self.style == "unimatch":
            return self.unimatch_losses(batch)
        return u2pl_losses(self, batch, self.cutmix_p, self.entropy_drop, self.teacher_entropy)

    def unimatch_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u = batch.unlabeled
        n_x, n_u = x.shape[0], u.weak.shape[0]

        # 1. The teacher's pseudo-labels of the weak view (eval mode, no gradient).
        conf, labels, _ = self.teacher_pseudo_labels(u.weak)

        # 2. CutMix within the batch: image i receives the box of image n - 1 - i, its strong
        #    pixels, pseudo-labels, confidences and padding alike.
        strong = Mixed(u.strong1, labels, conf, u.ignore)
        strong = cutmix_with(strong, u.box1, torch.arange(n_u).flip(0))

        # 3. The student on labeled and strong images in one batch, thresholded CE.
        logits = self.model(torch.cat((x, strong.images)))
        loss_x = self.labeled_loss(logits[:n_x], y)
        loss_u = consistency_loss(logits[n_x:], strong.labels, strong.conf, strong.ignore, self.tau)
        return {
            "loss": loss_x + self.weight_u * loss_u,
            "loss_x": loss_x,
            "loss_u": loss_u,
            "mask_ratio": mask_ratio(conf, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels, conf, u.gt, self.tau),
        }
