"""Supervised baseline: the labeled loss on the labeled stream only."""

from __future__ import annotations

from semiseg.data.batch import TrainBatch
from semiseg.methods.base import SemiSegModule


class Supervised(SemiSegModule):
    uses_unlabeled = False

    def training_losses(self, batch: TrainBatch):
        logits = self.model(batch.labeled.image)
        return {"loss": self.labeled_loss(logits, batch.labeled.mask)}
