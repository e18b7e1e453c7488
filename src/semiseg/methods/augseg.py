"""AugSeg (Zhao et al., CVPR 2023): augmentations are what matter.

The EMA teacher labels the weak view; the strong view gets k ~ U{1, 2, 3} random intensity ops
with random magnitudes; then an adaptive CutMix injects boxes of LABELED images (their ground
truth, confidence 1) into the unlabeled images that the teacher finds unreliable (probability
1 - reliability), and mixes the unlabeled images among themselves (augment/mixing.py, as the
public `cut_mix_label_adaptive` composes the two stages). `loss = loss_x + weight_u * loss_u`,
loss_u averaged over all N x H x W pixels as the public `loss.mean()` (the injected labeled pixels
marked 255 count as 0; padding: `IntensityAugmented`).
"""

from __future__ import annotations

import torch

from semiseg.augment.intensity import AUGSEG_POLICY
from semiseg.augment.mixing import Mixed, label_injecting_cutmix
from semiseg.data.batch import TrainBatch
from semiseg.methods.hardness import reliability
from semiseg.methods.losses import consistency_loss, mask_ratio, pseudo_label_accuracy
from semiseg.methods.teacher_student import IntensityAugmented


class AugSeg(IntensityAugmented):
    paper_policy = AUGSEG_POLICY

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u = batch.unlabeled
        n_x = x.shape[0]

        # 1. Teacher pseudo-labels of the weak view, and how reliable each image's are.
        conf, labels, logits_t = self.teacher_pseudo_labels(u.weak)
        rho = reliability(logits_t)

        # 2. Random intensity augmentation, then the label-injecting CutMix.
        strong = Mixed(self.strong_view(u), labels, conf, self.loss_ignore(u.ignore))
        strong = label_injecting_cutmix(strong, x, y, rho)

        # 3. The student on labeled and strong images in one batch.
        logits = self.model(torch.cat((x, strong.images)))
        loss_x = self.labeled_loss(logits[:n_x], y)
        loss_u = consistency_loss(
            logits[n_x:], strong.labels, strong.conf, strong.ignore, self.tau,
            over_all_pixels=self.train_on_padding,  # the public loss.mean() over N x H x W
        )  # fmt: skip
        return {
            "loss": loss_x + self.weight_u * loss_u,
            "loss_x": loss_x,
            "loss_u": loss_u,
            "reliability": rho.mean(),
            "mask_ratio": mask_ratio(conf, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels, conf, u.gt, self.tau),
        }
