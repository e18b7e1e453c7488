"""UniMatch V2 (Yang et al., TPAMI 2025; public code unimatch_v2.py): an EMA teacher labels the
weak view; two CutMix strong views go through one student forward with Complementary Dropout.

One step, as the public code:
1. the teacher (eval mode, no gradient) predicts the weak view: confidences and labels;
2. each strong view k gets CutMix with its partner, the batch in reverse order (`batch.flip(0)`):
   inside box k the partner's strong view k, and the partner's pseudo-labels, confidences and
   padding;
3. the student predicts the labeled batch, then both strong views in one forward with
   Complementary Dropout (models/dpt.py: the masks m and 2 - m on the two views' features, half
   of the pairs whole);
4. loss = (L_x + (L_s1 + L_s2) / 2) / 2, L_x the labeled loss (CE; OHEM on Cityscapes), L_sk the
   cross-entropy on pseudo-labels with confidence >= tau (0.95), summed and divided by the count
   of non-padded pixels;
5. one optimizer step (AdamW in the recipes), then the EMA update of the teacher with decay
   min(1 - 1/(t + 1), 0.996) on parameters and buffers (methods/teacher.py).

Both networks are validated; the student is the one evaluated and selects best.ckpt, as the
public code keeps best.pth by the student's mIoU (`eval.model=teacher` to choose the teacher).

Change detection (experiment=unimatch_v2_{whu,levir}_cd, model=siamese_dpt): the public
remote-sensing/unimatch_v2.py labels the weak pair with the student, not the EMA model
(`pseudo_labeler=student`), and keeps best.pth by the EMA model's changed IoU (`eval.model=teacher`
in those recipes).

The teacher comes from teacher_student.py (its counter is checkpointed: a resumed run continues
the ramp); the views, the partner and the pasted targets from weak_to_strong.py, so the views
may also be made in the step (`strong_views=step`) and the partner be other images
(`mix_partner=same|shuffle`, labelled by the teacher).
"""

from __future__ import annotations

from typing import Any

import torch

from semiseg.augment.mixing import paste
from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError
from semiseg.methods.losses import (
    consistency_loss,
    mask_ratio,
    pseudo_label_accuracy,
    pseudo_labels,
)
from semiseg.methods.teacher_student import TeacherStudentModule
from semiseg.methods.weak_to_strong import Targets, WeakToStrongModule


class UniMatchV2(TeacherStudentModule, WeakToStrongModule):
    public_ema_warmup = "ramp"  # its teacher ramps from the first update (see docstring)
    num_strong_views = 2
    default_eval_network = "student"  # best.pth follows the student's mIoU in the public code

    def __init__(
        self,
        *args,
        complementary_dropout: bool = True,
        ema_alpha: float = 0.996,
        mix_partner: str = "flip",
        pseudo_labeler: str = "teacher",
        **kwargs,
    ):
        super().__init__(*args, ema_alpha=ema_alpha, mix_partner=mix_partner, **kwargs)
        if pseudo_labeler not in ("teacher", "student"):
            raise ConfigError(
                f"method.pseudo_labeler={pseudo_labeler}: choose teacher (unimatch_v2.py) or "
                "student (its remote-sensing/unimatch_v2.py)"
            )
        self.pseudo_labeler = pseudo_labeler
        if complementary_dropout and not getattr(self.model, "complementary_dropout", False):
            raise ConfigError(
                f"method=unimatch_v2: model {type(self.model).__name__} has no Complementary "
                "Dropout; use model=dpt, or method.complementary_dropout=false"
            )
        self.complementary = bool(complementary_dropout)

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        # the views and partner of weak_to_strong.py (flip by default), not the teacher's
        return super(TeacherStudentModule, cls).data_requirements(
            {"mix_partner": "flip", **dict(method_cfg)}
        )

    @torch.no_grad()
    def weak_pseudo_labels(self, weak):
        """(conf, labels, logits) of the weak view: the EMA teacher's, or with
        pseudo_labeler=student the student's without gradient (the public remote-sensing code,
        whose EMA model is only validated; DPT has no dropout or BatchNorm, so its train and eval
        modes predict alike)."""
        if self.pseudo_labeler == "teacher":
            return self.teacher_pseudo_labels(weak)
        logits = self.model(weak)
        conf, labels = pseudo_labels(logits)
        return conf, labels, logits

    @torch.no_grad()
    def mix_pseudo_labels(self, mix_weak):
        """The partner batch's (conf, labels) (mix_partner=same|shuffle)."""
        conf, labels, _ = self.weak_pseudo_labels(mix_weak)
        return conf, labels

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u, mix = self.unlabeled_views(batch.unlabeled)

        # 1. The pseudo-labels of the weak view (and of the partner's, if another): the teacher's,
        #    or the student's with pseudo_labeler=student.
        conf_w, labels_w, _ = self.weak_pseudo_labels(u.weak)
        if self.mix_partner == "flip":
            mix_conf, mix_labels = conf_w.flip(0), labels_w.flip(0)
        else:
            mix_conf, mix_labels = self.mix_pseudo_labels(mix.weak)
        ours = Targets(labels_w, conf_w, u.ignore)
        partner = Targets(mix_labels, mix_conf, mix.ignore)

        # 2. CutMix: the partner's strong view k inside box k.
        u_s1 = paste(u.box1, u.strong1, mix.strong1)
        u_s2 = paste(u.box2, u.strong2, mix.strong2)

        # 3. The student: labeled images, then both strong views in one forward.
        pred_x = self.model(x)
        strong = torch.cat((u_s1, u_s2))
        if self.complementary:
            pred_s1, pred_s2 = self.model(strong, complementary_dropout=True).chunk(2)
        else:
            pred_s1, pred_s2 = self.model(strong).chunk(2)

        # 4. Losses, with the public masking and denominators.
        loss_x = self.labeled_loss(pred_x, y)
        loss_s1 = consistency_loss(pred_s1, *ours.cutmix(u.box1, partner), self.tau)
        loss_s2 = consistency_loss(pred_s2, *ours.cutmix(u.box2, partner), self.tau)
        loss_s = (loss_s1 + loss_s2) / 2
        return {
            "loss": (loss_x + loss_s) / 2,
            "loss_x": loss_x,
            "loss_s": loss_s,
            "loss_s1": loss_s1,
            "loss_s2": loss_s2,
            "mask_ratio": mask_ratio(conf_w, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels_w, conf_w, u.gt, self.tau),
        }


class FixMatchV2(UniMatchV2):
    """The FixMatch of the UniMatch V2 code (its fixmatch.py): UniMatch V2's teacher, partner and
    thresholds with one strong view and no Complementary Dropout; the labeled images and the
    CutMix strong view go through the student in one forward; loss = (L_x + L_s) / 2."""

    num_strong_views = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, complementary_dropout=False, **kwargs)

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u, mix = self.unlabeled_views(batch.unlabeled)

        conf_w, labels_w, _ = self.weak_pseudo_labels(u.weak)
        if self.mix_partner == "flip":
            mix_conf, mix_labels = conf_w.flip(0), labels_w.flip(0)
        else:
            mix_conf, mix_labels = self.mix_pseudo_labels(mix.weak)
        u_s = paste(u.box1, u.strong1, mix.strong1)

        n_x = x.shape[0]
        logits = self.model(torch.cat((x, u_s)))
        pred_x, pred_s = logits[:n_x], logits[n_x:]

        ours = Targets(labels_w, conf_w, u.ignore)
        target = ours.cutmix(u.box1, Targets(mix_labels, mix_conf, mix.ignore))
        loss_x = self.labeled_loss(pred_x, y)
        loss_s = consistency_loss(pred_s, *target, self.tau)
        return {
            "loss": (loss_x + loss_s) / 2,
            "loss_x": loss_x,
            "loss_s": loss_s,
            "mask_ratio": mask_ratio(conf_w, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels_w, conf_w, u.gt, self.tau),
        }
