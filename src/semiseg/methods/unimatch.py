"""UniMatch V1 (Yang et al., CVPR 2023): two strong views guided by one weak view, plus a
feature-perturbed stream. One forward of the mix batch without gradient, two train forwards,
one backward, one optimizer step."""

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


class UniMatch(WeakToStrongModule):
    num_strong_views = 2

    def __init__(self, *args, weight_s1=0.25, weight_s2=0.25, weight_fp=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights = {"s1": weight_s1, "s2": weight_s2, "fp": weight_fp}

    disagreement_views = "clean against feature-perturbed stream"

    @torch.no_grad()
    def prediction_pair(self, image):
        """The two streams of step 3 below: one decoder pass on the clean and the dropped-out
        features (the dropout is drawn from torch's generator: seed it for a repeatable pair)."""
        return self.model(image, feature_perturbation=True)

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u, mix = self.unlabeled_views(batch.unlabeled)

        # 1. Pseudo-labels of the partner batch (flip: taken from the weak forward below).
        if self.mix_partner != "flip":
            mix_conf, mix_labels = self.mix_pseudo_labels(mix.weak)

        # 2. CutMix: paste the partner's strong views into ours, inside each view's own box.
        u_s1 = paste(u.box1, u.strong1, mix.strong1)
        u_s2 = paste(u.box2, u.strong2, mix.strong2)

        # 3. Labeled + weak in one batch; the decoder also sees the dropout-perturbed features.
        n_x = x.shape[0]
        logits, logits_fp = self.model(torch.cat((x, u.weak)), feature_perturbation=True)
        pred_x, pred_w = logits[:n_x], logits[n_x:]
        pred_fp = logits_fp[n_x:]

        # 4. Both strong views in one batch (their own BatchNorm statistics).
        pred_s1, pred_s2 = self.model(torch.cat((u_s1, u_s2))).chunk(2)

        # 5. Pseudo-labels of the weak view; inside box k they come from the partner.
        conf_w, labels_w = pseudo_labels(pred_w)
        if self.mix_partner == "flip":
            mix_conf, mix_labels = conf_w.flip(0), labels_w.flip(0)
        ours = Targets(labels_w, conf_w, u.ignore)
        partner = Targets(mix_labels, mix_conf, mix.ignore)

        # 6. Losses, with the reference's masking and denominators.
        loss_x = self.labeled_loss(pred_x, y)
        loss_s1 = self.unlabeled_loss(pred_s1, *ours.cutmix(u.box1, partner))
        loss_s2 = self.unlabeled_loss(pred_s2, *ours.cutmix(u.box2, partner))
        loss_fp = self.unlabeled_loss(pred_fp, *ours)
        w = self.weights
        loss = (loss_x + w["s1"] * loss_s1 + w["s2"] * loss_s2 + w["fp"] * loss_fp) / 2
        return {
            "loss": loss,
            "loss_x": loss_x,
            "loss_s1": loss_s1,
            "loss_s2": loss_s2,
            "loss_fp": loss_fp,
            "mask_ratio": mask_ratio(conf_w, u.ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(labels_w, conf_w, u.gt, self.tau),
        }
