"""iMAS (Zhao et al., CVPR 2023): instance-specific, model-adaptive supervision.

Per unlabeled image, an easiness score e from how well the student and the EMA teacher agree and
how confident they are (methods/hardness.py). Easy images get the full strong view, hard ones a
view blended towards the weak one; a hard CutMix pairs the k-th easiest image with the k-th hardest
(with probability mean(e)); each image's loss is weighted by its e. As the public code
(train_semi.py): the CutMix mixes the WEAK views, the student sees labeled, weak, mixed and strong
images in one batch, and `loss = loss_x + weight_u * (loss_strong + loss_cutmix) / 2`, each
unlabeled loss per image over all H x W pixels (padding: `IntensityAugmented`).
"""

from __future__ import annotations

import torch

from semiseg.augment.intensity import IMAS_POLICY
from semiseg.augment.mixing import Mixed, hard_cutmix, hard_cutmix_triggered
from semiseg.data.batch import TrainBatch
from semiseg.methods.hardness import blend_views, easiness, easiness_weighted_loss
from semiseg.methods.losses import mask_ratio, pseudo_label_accuracy, pseudo_labels
from semiseg.methods.teacher_student import IntensityAugmented


class IMAS(IntensityAugmented):
    paper_policy = IMAS_POLICY

    trains_aux_head = True

    def __init__(self, *args, cutmix_side=(0.1, 0.9), aux_weight: float = 0.4, **kwargs):
        super().__init__(*args, **kwargs)
        self.cutmix_side = tuple(cutmix_side)
        # U2PL's auxiliary head, where the model has one (model.aux_head, the public Cityscapes
        # configs): its labeled loss (the same OHEM/CE) times aux_weight joins loss_x.
        self.aux_weight = aux_weight
        self.with_aux = getattr(self.model, "aux", None) is not None

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u = batch.unlabeled
        weak, n_x = u.weak, x.shape[0]
        ignore = self.loss_ignore(u.ignore)

        # 1. Teacher pseudo-labels; easiness from the student's and the teacher's views of them.
        conf, labels, _ = self.teacher_pseudo_labels(weak)
        with torch.no_grad():
            self.model.eval()
            conf_s, labels_s = pseudo_labels(self.model(weak))
            self.model.train()
        e = easiness(conf_s, labels_s, conf, labels, self.num_classes, self.tau)

        # 2. The strong view (2 random intensity ops), blended per image: e * strong + (1 - e) * weak.
        strong = blend_views(self.strong_view(u), weak, e)

        # 3. Hard CutMix of the weak views, with probability mean(e).
        views = [x, weak, strong]
        mixed = None
        if hard_cutmix_triggered(e):
            mixed = hard_cutmix(Mixed(weak, labels, conf, ignore), e, self.cutmix_side)
            views.append(mixed.images)

        # 4. The student on everything in one batch (the weak view only shapes BatchNorm).
        n_u = weak.shape[0]
        if self.with_aux:
            out = self.model(torch.cat(views), outputs=("logits", "aux"))
            logits = out["logits"]
        else:
            logits = self.model(torch.cat(views))
        pred_x, pred_s = logits[:n_x], logits[n_x + n_u : n_x + 2 * n_u]
        loss_x = self.labeled_loss(pred_x, y)
        if self.with_aux:  # the public Criterion(Ohem): main + aux_weight * aux, labeled only
            loss_x = loss_x + self.aux_weight * self.labeled_loss(out["aux"][:n_x], y)
        over_all = self.train_on_padding  # the public mean over every pixel of each image
        loss_u = easiness_weighted_loss(pred_s, labels, conf, ignore, e, self.tau, over_all)
        if mixed is not None:
            pred_m = logits[n_x + 2 * n_u :]
            loss_m = easiness_weighted_loss(
                pred_m, mixed.labels, mixed.conf, mixed.ignore, e, self.tau, over_all
            )
            loss_u = (loss_u + loss_m) / 2
        return {
            "loss": loss_x + self.weight_u * loss_u,
            "loss_x": loss_x,
            "loss_u": loss_u,
            "easiness": e.mean(),
            "cutmix": float(mixed is not None),
            "mask_ratio": mask_ratio(conf, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels, conf, u.gt, self.tau),
        }
