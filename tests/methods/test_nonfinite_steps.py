"""A non-finite batch leaves the model exactly as before (state_dict equal, BatchNorm statistics
and the EMA teacher included, the optimizer's momentum too): a NaN loss from NaN inputs, and a
finite loss whose backward gives NaN gradients (a real backward through a gradient hook).
Driven through a real Trainer on a tiny network, a few steps."""

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_clipping import TinyNet, _batches
from torch.utils.data import DataLoader

from semiseg.methods.fst import FST
from semiseg.methods.teacher_student import TeacherStudentModule

sys.path.insert(0, str(Path(__file__).parents[1]))
from trainers import quiet_trainer  # noqa: E402

# max_nonfinite_steps: a broken skip (NaN weights, every later loss NaN) stops instead of looping
OPTIM = {"lr": 0.1, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0,
         "poly_power": 0.9, "clip_grad": None, "max_nonfinite_steps": 3}  # fmt: skip


class Poisoning:
    """The `poison_at`-th loss computed goes wrong: `how=loss` turns its images to NaN (the loss
    is NaN), `how=gradients` leaves the loss finite and makes the backward through the head NaN."""

    how, poison_at = "loss", 1

    def poison(self, labeled):
        seen = getattr(self, "seen", 0)
        self.seen = seen + 1
        self.poison_gradients = seen == self.poison_at and self.how == "gradients"
        if not hasattr(self, "_hook"):
            self._hook = self.model.head.weight.register_hook(
                lambda g: g * float("nan") if self.poison_gradients else g
            )
        if seen == self.poison_at and self.how == "loss":
            return dataclasses.replace(labeled, image=torch.full_like(labeled.image, float("nan")))
        return labeled


class PoisonedTeacherStudent(Poisoning, TeacherStudentModule):
    def training_losses(self, batch):
        labeled = self.poison(batch.labeled)
        return {"loss": self.labeled_loss(self.model(labeled.image), labeled.mask)}


class Changes(Callback):
    """Per batch: whether the module's whole state_dict (student, teacher, BatchNorm buffers),
    the optimizer's state and the EMA counter came out of the batch exactly as they went in."""

    def __init__(self):
        self.unchanged = []

    @staticmethod
    def _state(trainer, module):
        return {
            "module": copy.deepcopy(module.state_dict()),
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()["state"]),
            "ema_updates": module.ema_updates,
            "step": trainer.global_step,
        }

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = self._state(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = self._state(trainer, module)
        self.unchanged.append(_equal(self.before, after))


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _module(cls, how, **kwargs):
    torch.manual_seed(0)
    module = cls(
        model=TinyNet(classes=2, batch_norm=True), class_names=["a", "b"], optim=OPTIM,
        evaluation={"mode": "original"}, crop_size=16, ema_alpha=0.9, **kwargs,
    )  # fmt: skip
    module.how = how
    return module


def _fit(module, steps, loader):
    changes = Changes()
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=[changes])
    trainer.fit(module, loader)
    return trainer, changes.unchanged


@pytest.mark.parametrize("how", ["loss", "gradients"])
def test_a_non_finite_batch_leaves_model_teacher_and_optimizer_as_before(how):
    module = _module(PoisonedTeacherStudent, how)
    trainer, unchanged = _fit(module, 3, DataLoader(_batches(4), batch_size=2))
    # the poisoned batch changed nothing; every other batch did change the state
    assert unchanged == [False, True, False, False]
    assert trainer.global_step == 3  # three real steps: the skipped batch did not count
    assert module.ema_updates == 3 and module.nonfinite_steps == 1
    assert all(v.isfinite().all() for v in module.state_dict().values() if v.is_floating_point())


# ------------------------------------------------------------------ FST: the whole iteration


class PoisonedFST(Poisoning, FST):
    def training_losses(self, batch):
        return super().training_losses(
            dataclasses.replace(batch, labeled=self.poison(batch.labeled))
        )


def _fst_batches(n):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "labeled": {"image": torch.randn(3, 8, 8, generator=g),
                        "mask": torch.randint(0, 2, (8, 8), generator=g)},
            "unlabeled": {"weak": torch.randn(3, 8, 8, generator=g),
                          "ignore": torch.zeros(8, 8, dtype=torch.long),
                          "gt": torch.randint(0, 2, (8, 8), generator=g)},
        }
        for _ in range(n)
    ]  # fmt: skip


def test_fst_abandons_the_iteration_on_nan_gradients_of_a_virtual_step():
    # k=1: losses 0 (virtual) and 1 (final) in the first iteration, 2 (virtual) in the second:
    # the second iteration's virtual step gets NaN gradients and the whole iteration goes back.
    module = _module(PoisonedFST, "gradients", k=1, base="meanteacher", entropy_drop=0.0)
    module.poison_at = 2
    trainer, unchanged = _fit(module, 2, DataLoader(_fst_batches(6), batch_size=2))
    assert unchanged == [False, True, False]
    assert trainer.global_step == 2 and module.nonfinite_steps == 1
    assert module.ema_updates == 2 * (1 + 2)
