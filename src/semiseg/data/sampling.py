"""Training order and augmentation draws that a resumed run repeats exactly.

Every training sample is drawn as a pair (index, seed): `EpochSampler` chooses both from a
generator of its own, seeded by the run's seed, the stream and the epoch, and `SeededItems` runs
the dataset's `__getitem__` under that seed (Python's, NumPy's and torch's generators), putting
the caller's generators back afterwards. Hence:

- loading data never moves the process's random generators, so the method's own draws in the
  step (CutMix boxes, dropout, the in-step strong view) depend only on the steps before, and a
  checkpoint's saved generators continue them exactly, wherever Lightning creates its iterators
  (a resumed run creates them again, validates again, and prefetches a batch in between);
- an epoch's order and every crop, flip and colour draw are a function of (seed, stream, epoch),
  the same with 0 or 8 workers, persistent or not, and the same in a run resumed at an epoch
  boundary as in the run never stopped.

A run resumed in the middle of an epoch draws the rest of that epoch afresh (its seed also holds
the number of batches already done): replaying the permutation from its start would train the
epoch's first batches twice. The later epochs are drawn as in the run never stopped. A stream
shorter than the epoch (domain adaptation's, under Lightning's max_size_cycle) starts again
with a new permutation and new seeds for each pass. Under DDP
every rank draws the same permutation and reads its own share (rank r: positions r, r + N, ...),
with the seeds of those positions, so ranks augment differently.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

STREAM_STRIDE = 1000  # the labeled stream's base seed and the unlabeled stream's


class EpochSampler(DistributedSampler):
    """Yields (index, seed) for this rank's share of a permutation of `dataset`, drawn from
    (seed, epoch, restart). A DistributedSampler, so Lightning calls `set_epoch` and, under
    DDP, does not replace it. `restart_epoch`/`restart_done`: the epoch a resumed run restarts
    in and the batches of it already trained (0 at an epoch boundary: nothing changes)."""

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        restart_epoch: int = -1,
        restart_done: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.restart_epoch, self.restart_done = int(restart_epoch), int(restart_done)

        self.passes = 0  # passes over the data in this epoch (a shorter stream cycles)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.passes = 0

    def epoch_seed(self) -> int:
        """A seed of (seed, epoch, batches done before a restart, pass), mixed by NumPy's
        SeedSequence: nearby seeds and epochs give unrelated streams."""
        restart = self.restart_done if self.epoch == self.restart_epoch else 0
        words = [self.seed % 2**63, self.epoch, restart, self.passes]
        return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.epoch_seed())
        self.passes += 1
        order = torch.randperm(len(self.dataset), generator=generator)
        total = self.num_samples * self.num_replicas  # padded with the order's start, as DDP's
        order = order.repeat(math.ceil(total / max(len(order), 1)))[:total]
        seeds = torch.randint(0, 2**62, (total,), generator=generator)
        share = slice(self.rank, total, self.num_replicas)
        return iter(zip(order[share].tolist(), seeds[share].tolist(), strict=True))


class SeededItems(Dataset):
    """`dataset[index]` under the seed `EpochSampler` drew for it; the caller's generators (the
    main process's when there are no workers) are left as they were."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, drawn: tuple[int, int]):
        index, seed = drawn
        python, numpy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python)
                np.random.set_state(numpy)

    def __getattr__(self, name):  # the wrapped dataset's attributes (collate needs, checks)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
