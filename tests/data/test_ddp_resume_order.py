"""Under DDP a run resumed mid-epoch draws the rest of the epoch afresh (as one process does,
whose restored generators draw a new order), not the epoch's first batches again: the train
samplers, built after the checkpoint is restored, take the resumed step into their seed."""

from types import SimpleNamespace

from torch.utils.data import DistributedSampler

from semiseg.data.datamodule import SemiSegDataModule


def _order(step: int, epoch: int = 0, stream: int = 0, rank: int = 0) -> list[int]:
    module = SimpleNamespace(
        trainer=SimpleNamespace(world_size=2, global_rank=rank, global_step=step)
    )
    sampler = SemiSegDataModule._distributed_sampler(module, list(range(64)), stream)
    sampler.set_epoch(epoch)  # as Lightning does at each epoch
    return list(sampler)


def test_a_run_resumed_mid_epoch_draws_a_new_order_on_every_rank(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    fresh = DistributedSampler(list(range(64)), 2, 0, shuffle=True, seed=3)
    fresh.set_epoch(0)
    assert _order(step=0) == list(fresh)  # a run that starts afresh: the order it always had
    resumed = _order(step=5)  # resumed at step 5 of epoch 0
    assert resumed != _order(step=0)  # the epoch's first batches are not replayed
    assert resumed[:2] != _order(step=0)[:2]
    # the ranks still split one permutation: no image twice within the resumed epoch
    other = _order(step=5, rank=1)
    assert not set(resumed) & set(other) and len(resumed) + len(other) == 64
    assert _order(step=5, stream=1) != resumed  # the two streams stay independent
