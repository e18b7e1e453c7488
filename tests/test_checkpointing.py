"""RunCheckpoints: a run stopped by SIGTERM at any step or in the middle of a validation resumes
on the schedule of a run that was never stopped (steps, validations, logged step numbers), and
best.ckpt holds the weights of the best validation across resumes. A tiny model, in-process."""

import copy
import signal
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from semiseg.checkpoints.callback import FIT_LOOP, TRAIN_PROGRESS, VAL_PROGRESS, RunCheckpoints
from semiseg.checkpoints.io import BEST, LAST, AtomicCheckpointIO, peek
from semiseg.checkpoints.preemption import Preempted
from semiseg.checkpoints.resume import config_mismatch, resume_checkpoint
from semiseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "methods"))
from test_clipping import Recording, TinyNet, _batches  # noqa: E402
from trainers import quiet_trainer


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


class SigtermInValidation(Callback):
    """Deliver a real SIGTERM while the validation after step `step` is under way."""

    def __init__(self, step):
        self.step = step

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if trainer.global_step == self.step and batch_idx == 0:
            signal.raise_signal(signal.SIGTERM)


class Scripted(Recording):
    """Validation mIoU scripted by step (50, 70, 60 at steps 4, 8, 12): the second is the best."""

    SCORES = {4: 50.0, 8: 70.0, 12: 60.0}

    def on_validation_epoch_end(self):
        self.task.compute(self.eval_network_name)  # resets the task's counts
        miou = self.SCORES[self.global_step]
        self.best_score = max(self.best_score, miou)
        self.val_history.append({"step": self.global_step, "miou": miou})


class WeightsSeen(Callback):
    """The weights each validation evaluated, by step."""

    def __init__(self):
        self.by_step = {}

    def on_validation_end(self, trainer, pl_module):
        state = pl_module.state_dict()
        self.by_step[trainer.global_step] = {k: v.clone() for k, v in state.items()}


def _module(cls=None):
    torch.manual_seed(0)
    optim = {"lr": 0.01, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0,
             "poly_power": 0.9, "clip_grad": None}  # fmt: skip
    return (cls or Recording)(
        model=TinyNet(),
        class_names=["a", "b"],
        optim=optim,
        evaluation={"mode": "original"},
        crop_size=16,
    )


def _fit(callbacks, ckpt_path=None, max_steps=10, module_cls=None):
    trainer = quiet_trainer(
        max_steps=max_steps,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # as the runner builds it
        enable_checkpointing=True,
    )
    data = DataLoader(_batches(8), batch_size=2)  # 8 batches per epoch: the run crosses an epoch
    val = DataLoader(_batches(1), batch_size=1)
    trainer.fit(_module(module_cls), data, val, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted():
    trace = Trace()
    _fit([trace])
    return trace


@pytest.mark.parametrize("stop_at", [3, 4, 8, 9])  # plain steps, validated steps, epoch end
def test_sigterm_then_resume_keeps_the_schedule(tmp_path, uninterrupted, stop_at):
    before, after = Trace(), Trace()
    last = RunCheckpoints(tmp_path, every_n_steps=2)
    with pytest.raises(Preempted) as stop:
        _fit([last, before, SigtermAt(stop_at)])
    assert stop.value.step == stop_at
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler given back
    saved = torch.load(tmp_path / LAST, map_location="cpu", weights_only=True)
    assert saved["global_step"] == stop_at
    _fit([RunCheckpoints(tmp_path), after], ckpt_path=tmp_path / LAST)
    assert before.steps + after.steps == uninterrupted.steps
    assert before.validated + after.validated == uninterrupted.validated == [4, 8]


@pytest.mark.parametrize("stop_at", [4, 8])
def test_sigterm_during_validation_abandons_it_and_the_resumed_run_validates_again(
    tmp_path, uninterrupted, stop_at
):
    before, after = Trace(), Trace()
    with pytest.raises(Preempted) as stop:
        _fit([RunCheckpoints(tmp_path), before, SigtermInValidation(stop_at)])
    assert stop.value.step == stop_at
    assert stop_at not in before.validated  # abandoned after its first image
    assert peek(tmp_path / LAST)["global_step"] == stop_at
    _fit([RunCheckpoints(tmp_path), after], ckpt_path=tmp_path / LAST)
    assert before.steps + after.steps == uninterrupted.steps
    assert before.validated + after.validated == [4, 8]
    assert after.validated[0] == stop_at  # the whole validation, from its first image


def _weights(path):
    return {k: v for k, v in peek(path)["state_dict"].items()}


def _assert_same_weights(saved, expected):
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key


@pytest.mark.parametrize("new_dir", [False, True])
def test_best_ckpt_holds_the_best_validation_across_a_resume(tmp_path, new_dir):
    """Scores 50, 70, 60: killed after the best (70), resumed, then 60 must not replace it."""
    first, seen = tmp_path / "first", WeightsSeen()
    with pytest.raises(Preempted):
        _fit([RunCheckpoints(first), seen, SigtermAt(10)], max_steps=12, module_cls=Scripted)
    second = tmp_path / "second" if new_dir else first  # resume=PATH into a new run directory
    resumed = RunCheckpoints(second)
    trainer = _fit([resumed, seen], ckpt_path=first / LAST, max_steps=12, module_cls=Scripted)
    assert [h["miou"] for h in trainer.lightning_module.val_history] == [50.0, 70.0, 60.0]
    best = peek(second / BEST)
    assert best["global_step"] == 8 and best["semiseg"]["best_score"] == 70.0
    _assert_same_weights(_weights(second / BEST), seen.by_step[8])
    assert resumed.best_step == 8


def test_best_ckpt_restarts_when_the_best_weights_are_gone(tmp_path, capsys):
    first = tmp_path / "first"
    with pytest.raises(Preempted):
        _fit([RunCheckpoints(first), SigtermAt(10)], max_steps=12, module_cls=Scripted)
    (first / BEST).unlink()  # only last.ckpt was copied elsewhere
    seen = WeightsSeen()
    trainer = _fit(
        [RunCheckpoints(tmp_path / "second"), seen],
        ckpt_path=first / LAST,
        max_steps=12,
        module_cls=Scripted,
    )
    assert "no best.ckpt of step 8" in capsys.readouterr().out
    assert trainer.lightning_module.best_score == 60.0  # what best.ckpt holds now
    assert peek(tmp_path / "second" / BEST)["semiseg"]["best_score"] == 60.0
    _assert_same_weights(_weights(tmp_path / "second" / BEST), seen.by_step[12])


def test_elapsed_time_adds_up_over_segments(tmp_path):
    with pytest.raises(Preempted):
        _fit([RunCheckpoints(tmp_path, started=0.0), SigtermAt(3)])  # "started" long ago
    earlier = peek(tmp_path / LAST)["callbacks"]["RunCheckpoints"]["elapsed_s"]
    assert earlier > 1e9
    resumed = RunCheckpoints(tmp_path)
    _fit([resumed], ckpt_path=tmp_path / LAST)
    assert resumed.elapsed_s() >= earlier


class LoopsSeen(Callback):
    """A copy of checkpoint["loops"] as Lightning made it: Lightning runs Checkpoint callbacks
    (RunCheckpoints) last, so this hook sees the dict before their rewrite."""

    def __init__(self):
        self.raw = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.raw.append(copy.deepcopy(checkpoint["loops"]))


# What RunCheckpoints.on_save_checkpoint reads and writes in each progress entry it rewrites.
COUNTERS = {
    TRAIN_PROGRESS: ("ready", "started", "completed"),
    VAL_PROGRESS: ("ready", "started", "processed", "completed"),
}


def _progress(loops: dict, entry: str) -> dict:
    """loops[FIT_LOOP][entry], failing with the key path Lightning no longer writes."""
    assert FIT_LOOP in loops, f"Lightning's checkpoint has no loops[{FIT_LOOP!r}]: {list(loops)}"
    assert entry in loops[FIT_LOOP], (
        f"Lightning's checkpoint has no loops[{FIT_LOOP!r}][{entry!r}]: the rewrite in "
        f"RunCheckpoints.on_save_checkpoint would do nothing; keys: {sorted(loops[FIT_LOOP])}"
    )
    progress = loops[FIT_LOOP][entry]
    for group in ("total", "current"):
        for counter in COUNTERS[entry]:
            value = progress.get(group, {}).get(counter)
            assert isinstance(value, int), f"loops[{FIT_LOOP!r}][{entry!r}][{group!r}][{counter!r}]"
    return progress


def test_lightning_still_writes_the_loop_progress_the_rewrite_edits(tmp_path):
    """The rewrite edits Lightning's private loop state; a Lightning that renames or reshapes it
    would make the rewrite a silent no-op (and resumed runs shift their schedule). A real fit,
    saved mid-epoch (rewind "batch") and mid-validation (rewind "validation")."""
    seen = LoopsSeen()
    _fit([seen, RunCheckpoints(tmp_path / "batch", every_n_steps=2)], max_steps=3)
    raw = _progress(seen.raw[0], TRAIN_PROGRESS)  # the save at step 2, next batch fetched
    assert raw["total"]["ready"] == raw["total"]["completed"] + 1  # what the rewrite undoes
    saved = _progress(peek(tmp_path / "batch" / LAST)["loops"], TRAIN_PROGRESS)
    for group in ("total", "current"):
        assert saved[group]["ready"] == saved[group]["started"] == raw[group]["completed"]

    seen = LoopsSeen()
    with pytest.raises(Preempted):
        _fit([seen, RunCheckpoints(tmp_path / "val"), SigtermInValidation(4)])
    raw = _progress(seen.raw[-1], VAL_PROGRESS)
    assert raw["current"]["completed"] >= 1  # an image done: what the rewrite undoes
    saved = _progress(peek(tmp_path / "val" / LAST)["loops"], VAL_PROGRESS)
    assert saved["current"] == {**saved["current"], "ready": 1, "started": 1, "processed": 0,
                                "completed": 0}  # fmt: skip


def test_identity_keys_that_differ_are_named():
    saved = {"method": {"name": "unimatch", "tau": 0.95}, "seed": 0, "split": "20",
             "model": {"encoder": "resnet101", "pretrained": "x"}, "dataset": {"name": "toy"}}  # fmt: skip
    same = {**saved, "model": {"encoder": "resnet101", "pretrained": None}, "trainer": {}}
    assert config_mismatch(saved, same) == []
    other = {**saved, "method": {"name": "fixmatch", "tau": 0.95}, "seed": 1}
    assert config_mismatch(saved, other) == [
        "method.name=unimatch there, fixmatch here",
        "seed=0 there, 1 here",
    ]


def test_resume_argument(tmp_path):
    assert resume_checkpoint(None, tmp_path) is None
    assert resume_checkpoint("auto", tmp_path) is None  # nothing yet: start afresh
    (tmp_path / LAST).write_bytes(b"x")
    assert resume_checkpoint("auto", tmp_path) == tmp_path / LAST
    assert resume_checkpoint(str(tmp_path / LAST), tmp_path) == tmp_path / LAST
    with pytest.raises(ConfigError, match="no checkpoint"):
        resume_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path)
