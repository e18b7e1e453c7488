"""LastCheckpoint: a run stopped by SIGTERM at any step resumes on the schedule of a run that was
never stopped (steps, validations, logged step numbers). A tiny model, in-process."""

import signal
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from semiseg.checkpointing import LAST, LastCheckpoint, Preempted, resume_checkpoint
from semiseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "methods"))
from test_clipping import Recording, TinyNet, _batches  # noqa: E402


class Trace(Callback):
    """(global step, logger step) after every batch, and the steps validated."""

    def __init__(self):
        self.steps, self.validated = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loop = trainer.fit_loop.epoch_loop
        self.steps.append((trainer.global_step, loop._batches_that_stepped))

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.validated.append(trainer.global_step)


class SigtermAt(Callback):
    """Deliver a real SIGTERM to this process after optimizer step `step`."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGTERM)


def _module():
    torch.manual_seed(0)
    optim = {"lr": 0.01, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0,
             "poly_power": 0.9, "clip_grad": None}  # fmt: skip
    return Recording(
        model=TinyNet(),
        class_names=["a", "b"],
        optim=optim,
        evaluation={"mode": "original"},
        crop_size=16,
    )


def _fit(callbacks, ckpt_path=None):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=10,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    data = DataLoader(_batches(8), batch_size=2)  # 8 batches per epoch: the run crosses an epoch
    val = DataLoader(_batches(1), batch_size=1)
    trainer.fit(_module(), data, val, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted():
    trace = Trace()
    _fit([trace])
    return trace


@pytest.mark.parametrize("stop_at", [3, 4, 8, 9])  # plain steps, validated steps, epoch end
def test_sigterm_then_resume_keeps_the_schedule(tmp_path, uninterrupted, stop_at):
    before, after = Trace(), Trace()
    last = LastCheckpoint(tmp_path, every_n_steps=2)
    with pytest.raises(Preempted) as stop:
        _fit([last, before, SigtermAt(stop_at)])
    assert stop.value.step == stop_at
    assert signal.getsignal(signal.SIGTERM) is not last._on_signal  # handler given back
    saved = torch.load(tmp_path / LAST, map_location="cpu", weights_only=False)
    assert saved["global_step"] == stop_at
    _fit([LastCheckpoint(tmp_path), after], ckpt_path=tmp_path / LAST)
    assert before.steps + after.steps == uninterrupted.steps
    assert before.validated + after.validated == uninterrupted.validated == [4, 8]


def test_resume_argument(tmp_path):
    assert resume_checkpoint(None, tmp_path) is None
    assert resume_checkpoint("auto", tmp_path) is None  # nothing yet: start afresh
    (tmp_path / LAST).write_bytes(b"x")
    assert resume_checkpoint("auto", tmp_path) == tmp_path / LAST
    assert resume_checkpoint(str(tmp_path / LAST), tmp_path) == tmp_path / LAST
    with pytest.raises(ConfigError, match="no checkpoint"):
        resume_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path)
