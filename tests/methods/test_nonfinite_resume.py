"""The count of non-finite steps in a row is in the checkpoint: a run stopped (or preempted)
after two NaN losses in a row and resumed into a third stops at optim.max_nonfinite_steps=3 on
that third one, as the uninterrupted run would, instead of counting from zero again."""

import sys
from pathlib import Path

import pytest
from test_clipping import _batches
from test_nonfinite_steps import OPTIM, _module
from torch.utils.data import DataLoader

from semiseg.errors import NonFiniteError
from semiseg.methods.teacher_student import TeacherStudentModule

sys.path.insert(0, str(Path(__file__).parents[1]))
from trainers import quiet_trainer  # noqa: E402


class NaNAfterFirst(TeacherStudentModule):
    """Every loss after the first `finite` ones is NaN; counts the losses it computed."""

    finite = 1

    def training_losses(self, batch):
        self.losses = getattr(self, "losses", 0) + 1
        loss = self.labeled_loss(self.model(batch.labeled.image), batch.labeled.mask)
        return {"loss": loss if self.losses <= self.finite else loss * float("nan")}


def _loader():
    return DataLoader(_batches(3), batch_size=2)


def test_a_resumed_run_goes_on_counting_non_finite_steps_in_a_row(tmp_path):
    assert OPTIM["max_nonfinite_steps"] == 3
    first = _module(NaNAfterFirst, "loss")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(first, _loader())  # one real step, then two NaN losses in a row
    assert trainer.global_step == 1 and first.nonfinite_in_a_row == 2
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    resumed = _module(NaNAfterFirst, "loss")
    resumed.finite = 0  # the data are still bad
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match="3 non-finite losses or gradients in a row"):
        trainer.fit(resumed, _loader(), ckpt_path=tmp_path / "last.ckpt", weights_only=False)
    assert resumed.losses == 1  # the third in a row, the first after the resume
