"""A method whose inputs turn to NaN on chosen batches: a real non-finite loss, from a real
forward, for the tests of skipped steps (train.py method._target_=poisoned.PoisonedSupervised)."""

import torch

from semiseg.data.batch import Labeled, TrainBatch
from semiseg.methods.supervised import Supervised


class PoisonedSupervised(Supervised):
    def __init__(self, *args, poison_batches=(), poison_from=None, poison_rank=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison_batches = set(poison_batches)
        self.poison_from = poison_from
        self.poison_rank = poison_rank  # None: every rank
        self.batches_seen = 0

    def poisoned(self, seen: int) -> bool:
        if self.poison_rank is not None and self.global_rank != self.poison_rank:
            return False
        return seen in self.poison_batches or (
            self.poison_from is not None and seen >= self.poison_from
        )

    def training_losses(self, batch):
        seen, self.batches_seen = self.batches_seen, self.batches_seen + 1
        if self.poisoned(seen):
            image = torch.full_like(batch.labeled.image, float("nan"))
            batch = TrainBatch(Labeled(image, batch.labeled.mask), batch.unlabeled)
        return super().training_losses(batch)
