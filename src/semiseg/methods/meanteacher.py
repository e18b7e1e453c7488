"""Mean teacher with CutMix, the teacher-student family's baseline (the CutMix mean teacher of
the U2PL code base that iMAS and AugSeg build on): the EMA teacher labels the weak view, the
student learns them on a CutMix strong view, thresholded cross-entropy."""

from __future__ import annotations

import torch

from semiseg.augment.mixing import Mixed, cutmix_with
from semiseg.data.batch import TrainBatch
from semiseg.methods.losses import consistency_loss, mask_ratio, pseudo_label_accuracy
from semiseg.methods.teacher_student import TeacherStudentModule


class MeanTeacher(TeacherStudentModule):
    num_strong_views = 1  # the UniMatch strong view and CutMix box, made by the data workers

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u = batch.unlabeled
        n_x, n_u = x.shape[0], u.weak.shape[0]

        # 1. The teacher's pseudo-labels of the weak view (eval mode, no gradient).
        conf, labels, _ = self.teacher_pseudo_labels(u.weak)

        # 2. CutMix within the batch: image i receives the box of image n - 1 - i, its strong
        #    pixels, pseudo-labels, confidences and padding alike.
        strong = Mixed(u.strong1, labels, conf, u.ignore)
        strong = cutmix_with(strong, u.box1, torch.arange(n_u).flip(0))

        # 3. The student on labeled and strong images in one batch.
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
