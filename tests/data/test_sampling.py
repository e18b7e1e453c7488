"""The training order and the augmentation draws (data/sampling.py): a function of seed, stream
and epoch, never of the process's random generators, which loading leaves alone; a run resumed
mid-epoch draws the rest of that epoch afresh on every rank."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from semiseg.data.datamodule import SemiSegDataModule
from semiseg.data.sampling import EpochSampler, SeededItems


class Draws(Dataset):
    """Each item: its index and one draw of each of Python's, NumPy's and torch's generators
    (a dataset's augmentation draws all three)."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.tensor([index, random.random(), np.random.rand(), torch.rand(()).item()])


def _epoch(sampler: EpochSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)  # as Lightning does at each epoch
    return list(sampler)


def test_an_epoch_is_a_permutation_drawn_from_seed_and_epoch_alone():
    first = _epoch(EpochSampler(list(range(12)), seed=3), 0)
    assert sorted(i for i, _ in first) == list(range(12))
    torch.manual_seed(123), random.seed(5), np.random.seed(7)  # the process's generators ...
    assert _epoch(EpochSampler(list(range(12)), seed=3), 0) == first  # ... play no part
    assert _epoch(EpochSampler(list(range(12)), seed=3), 1) != first
    assert _epoch(EpochSampler(list(range(12)), seed=4), 0) != first
    assert len({s for _, s in first}) == 12  # every position its own augmentation seed


def test_a_shorter_stream_draws_each_pass_anew_and_the_next_epoch_starts_over():
    sampler = EpochSampler(list(range(12)), seed=3)
    sampler.set_epoch(2)
    passes = [list(sampler), list(sampler)]  # Lightning's max_size_cycle iterates it again
    assert passes[0] != passes[1]
    assert _epoch(sampler, 2) == passes[0]  # set_epoch: the epoch's first pass again


def test_a_restart_mid_epoch_draws_that_epoch_afresh_and_the_later_ones_as_before():
    plain = EpochSampler(list(range(64)), seed=3, num_replicas=2, rank=0)
    resumed = EpochSampler(list(range(64)), seed=3, num_replicas=2, rank=0, restart_epoch=4,
                           restart_done=5)  # fmt: skip
    assert _epoch(resumed, 4)[:2] != _epoch(plain, 4)[:2]  # not the epoch's first batches again
    assert _epoch(resumed, 5) == _epoch(plain, 5)
    at_boundary = EpochSampler(list(range(64)), 3, 2, 0, restart_epoch=4, restart_done=0)
    assert _epoch(at_boundary, 4) == _epoch(plain, 4)  # resumed between epochs: the same epoch


def test_ranks_share_one_permutation_with_their_own_seeds():
    ranks = [_epoch(EpochSampler(list(range(13)), 3, 2, r, restart_epoch=0, restart_done=2), 0)
             for r in (0, 1)]  # fmt: skip
    indices = [i for share in ranks for i, _ in share]
    assert len(ranks[0]) == len(ranks[1]) == 7  # padded as DistributedSampler pads
    assert set(indices) == set(range(13)) and len(indices) == 14  # one image twice: the pad
    assert not {s for _, s in ranks[0]} & {s for _, s in ranks[1]}


def _loader(workers: int) -> DataLoader:
    return DataLoader(
        SeededItems(Draws()),
        batch_size=4,
        sampler=EpochSampler(list(range(12)), seed=9),
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )


def test_loading_leaves_the_process_generators_alone():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = (torch.rand(3).tolist(), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    batches = list(_loader(workers=0))
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == expected
    # the items were drawn under their own seeds: the same seed, the same draws
    again = list(_loader(workers=0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert len({float(row[3]) for batch in batches for row in batch}) == 12


@pytest.mark.parametrize("workers", [2])
def test_the_same_batches_with_or_without_workers(workers):
    alone, forked = list(_loader(0)), list(_loader(workers))
    assert all(torch.equal(a, b) for a, b in zip(alone, forked, strict=True))


def test_the_datamodule_tells_its_samplers_where_a_resumed_run_restarts(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    progress = SimpleNamespace(current=SimpleNamespace(completed=5))
    trainer = SimpleNamespace(
        world_size=2,
        global_rank=1,
        current_epoch=4,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )
    module = SimpleNamespace(trainer=trainer, _seed=lambda s: SemiSegDataModule._seed(None, s))
    labeled = SemiSegDataModule._epoch_sampler(module, list(range(64)), stream=0)
    unlabeled = SemiSegDataModule._epoch_sampler(module, list(range(64)), stream=1)
    assert (labeled.num_replicas, labeled.rank, labeled.seed) == (2, 1, 3)
    assert (labeled.restart_epoch, labeled.restart_done) == (4, 5)
    assert unlabeled.seed == 1003  # the streams draw independently
    assert _epoch(labeled, 4) != _epoch(unlabeled, 4)
