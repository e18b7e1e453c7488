"""FixMatch for segmentation (the UniMatch authors' re-implementation): one strong view with
CutMix, supervised by the confident pseudo-labels of the weak view."""

from __future__ import annotations

import torch

from semiseg.augment.mixing import paste
from semiseg.data.batch import TrainBatch
from semiseg.methods.losses import (
    mask_ratio,
    pseudo_label_accuracy,
    pseudo_labels,
)
from semiseg.methods.weak_to_strong import Targets, WeakToStrongModule


class FixMatch(WeakToStrongModule):
    num_strong_views = 1

    def __init__(self, *args, weight_s=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_s = weight_s

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u, mix = self.unlabeled_views(batch.unlabeled)

        if self.mix_partner != "flip":
            mix_conf, mix_labels = self.mix_pseudo_labels(mix.weak)
        u_s = paste(u.box1, u.strong1, mix.strong1)

        n_x = x.shape[0]
        logits = self.model(torch.cat((x, u.weak)))
        pred_x, pred_w = logits[:n_x], logits[n_x:]
        pred_s = self.model(u_s)

        conf_w, labels_w = pseudo_labels(pred_w)
        if self.mix_partner == "flip":
            mix_conf, mix_labels = conf_w.flip(0), labels_w.flip(0)
        ours = Targets(labels_w, conf_w, u.ignore)
        target_s = ours.cutmix(u.box1, Targets(mix_labels, mix_conf, mix.ignore))

        loss_x = self.labeled_loss(pred_x, y)
        loss_s = self.unlabeled_loss(pred_s, *target_s)
        loss = (loss_x + self.weight_s * loss_s) / 2
        return {
            "loss": loss,
            "loss_x": loss_x,
            "loss_s": loss_s,
            "mask_ratio": mask_ratio(conf_w, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels_w, conf_w, u.gt, self.tau),
        }
