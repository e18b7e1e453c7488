"""The step progress bar and the wall-time estimate, through real (tiny) Trainer runs."""

from types import SimpleNamespace

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from semiseg.progress import (
    StepProgressBar,
    WallTimeEstimate,
    clock_time,
    duration,
    progress_callbacks,
)


class Tiny(L.LightningModule):
    def __init__(self, encoder=None):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        if encoder:
            self.run_config = {"model": {"encoder": encoder}}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val/loss", self.layer(x).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n=4):  # an epoch of 4 batches: a run of 10 steps crosses epochs
    return DataLoader(TensorDataset(torch.randn(n, 4)), batch_size=1)


class Clock(L.Callback):
    """Time that passes `step_s` per training step and `val_s` per validation batch (listed
    before the estimate, so the step's time has passed when the estimate reads it)."""

    def __init__(self, step_s, val_s=0.0):
        self.now, self.step_s, self.val_s = 0.0, step_s, val_s

    def __call__(self):
        return self.now

    def on_train_batch_end(self, *_):
        self.now += self.step_s

    def on_validation_batch_end(self, *_, **__):
        self.now += self.val_s


def fit(callbacks, max_steps=10, val_every=5, module=None, **kwargs):
    trainer = quiet_trainer(
        max_steps=max_steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(module or Tiny(), loader(), loader(2))
    return trainer


def test_the_bar_counts_steps_against_max_steps_across_epochs(capsys):
    clock = Clock(2.0, val_s=1.5)
    estimate = WallTimeEstimate(measure_steps=3, clock=clock)
    bar = StepProgressBar(estimate)
    trainer = fit([clock, estimate, bar], enable_progress_bar=True)
    assert trainer.current_epoch >= 2  # 10 steps of 4-batch epochs
    assert bar.train_progress_bar.total == 10 and bar.train_progress_bar.n == 10
    out = capsys.readouterr().out
    assert "step 10/10" in out and "Epoch" not in out and "/-2" not in out
    assert "eta=" in out
    # steps 2-4 are timed, the first is not
    assert (
        "expected wall time: 12 s for the 6 steps left of trainer.max_steps=10 (2.00 s per step "
        "on this machine, timed over steps 2-4), plus 2 validations (timed at the first)"
    ) in out
    assert "warning" not in out
    assert estimate.seconds_per_step == 2.0
    assert estimate.seconds_per_validation == 3.0  # 2 batches


def test_the_eta_adds_the_timed_validations():
    clock = Clock(1.0, val_s=0.5)
    estimate = WallTimeEstimate(measure_steps=2, clock=clock)
    trainer = fit([clock, estimate], max_steps=12, val_every=4, enable_progress_bar=False)
    assert estimate.remaining_s(trainer) == 0 and estimate.eta(trainer) == "0:00:00"
    assert len(estimate._val_s) == 3  # at steps 4, 8, 12
    at_step_4 = SimpleNamespace(
        global_step=4, max_steps=12, val_check_batch=4, enable_validation=True
    )
    estimate._validated = 4  # after step 4's validation
    assert estimate.validations_left(at_step_4) == 2  # at steps 8 and 12
    assert (estimate.seconds_per_step, estimate.seconds_per_validation) == (1.0, 1.0)
    assert estimate.remaining_s(at_step_4) == 8 * 1.0 + 2 * 1.0
    assert estimate.eta(at_step_4) == clock_time(10) == "0:00:10"
    # max_steps not a multiple of the interval: train.py validates the final weights too
    at_step_3 = SimpleNamespace(
        global_step=3, max_steps=10, val_check_batch=4, enable_validation=True
    )
    assert estimate.validations_left(at_step_3) == 3  # 4, 8 and the final one at 10
    estimate._validated = 0  # at step 4's end, before its validation
    assert estimate.validations_left(at_step_4) == 3


def test_a_schedule_longer_than_a_day_is_warned_with_what_would_fit(capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    clock = Clock(3600.0)
    estimate = WallTimeEstimate(measure_steps=3, clock=clock)
    fit([clock, estimate], 40, 40, module=Tiny("resnet101"), enable_progress_bar=False)
    lines = capsys.readouterr().out.splitlines()
    said = [line for line in lines if line.startswith(("expected", "warning"))]
    # one step of an hour is timing enough (WallTimeEstimate.measure_s)
    assert said[0] == (
        "expected wall time: 38 h 00 min for the 38 steps left of trainer.max_steps=40 "
        "(3600.00 s per step on this machine, timed over step 2), plus 1 validation (timed at "
        "the first)"
    )
    assert said[1] == (
        "warning: at 3600.0 s per step the 38 steps left take about 38 h 00 min on this machine; "
        "to fit in a day: a smaller encoder (model.encoder=resnet18), fewer steps "
        "(trainer.max_steps=24 fit in a day at this speed) or a GPU"
    )  # no trainer.precision=fast: it is fp32 on a CPU without native bf16
    assert len(said) == 2


def test_the_warning_names_the_fast_precision_where_it_helps(capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    clock = Clock(3600.0)
    estimate = WallTimeEstimate(measure_steps=3, clock=clock)
    fit([clock, estimate], 40, 40, module=Tiny("resnet18"), enable_progress_bar=False)
    warning = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("warning"))
    assert "smaller encoder" not in warning  # resnet18 already
    assert "trainer.precision=fast (bf16-mixed here)" in warning


def test_train_py_gets_the_bar_only_when_it_is_enabled():
    with_bar = progress_callbacks({"enable_progress_bar": True})
    assert [type(c) for c in with_bar] == [WallTimeEstimate, StepProgressBar]
    assert with_bar[1].estimate is with_bar[0]
    assert [type(c) for c in progress_callbacks({"enable_progress_bar": False})] == [
        WallTimeEstimate
    ]


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (45, 720, 3 * 3600 + 300, 2.5 * 86400)] == [
        "45 s",
        "12 min",
        "3 h 05 min",
        "2.5 days",
    ]
