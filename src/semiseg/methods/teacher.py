"""The EMA teacher of the teacher-student methods (mean teacher, iMAS, AugSeg).

The public iMAS and AugSeg code (train_semi.py, "update teacher model with EMA") updates the
teacher after every optimizer step with `decay = min(1 - 1/(t + 1), alpha)`: parameters always,
and every buffer averaged with the same decay (`buffer_eval * decay + buffer_train * (1 - decay)`;
copying the student's buffers is left commented out). Their `t` is the global iteration, and the
decay is forced to 0 for the whole first epoch (`epoch > sup_only_epoch` fails at epoch 0), so
their teacher copies the student for one epoch and the ramp only starts afterwards, already near
alpha: `ema_decay(t, alpha, copy_updates=<updates in one epoch>)`. Here `t` is the method's own
update counter (= their global iteration while no step is skipped); with `copy_updates=0` the
ramp starts at the first update (UniMatch V2, CSS, FST here).

Integer buffers (BatchNorm's `num_batches_tracked`) are always copied: the public update turns
them into floats, and a rounded average of a counter means nothing. They matter only to
BatchNorm layers built with `momentum=None`, and the teacher never runs in train mode anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def ema_decay(step: int, alpha: float, copy_updates: int = 0) -> float:
    """The decay for update number `step` (0-based): 0 (the teacher becomes the student) for the
    first `copy_updates` updates and for the first one, then min(1 - 1/(step + 1), alpha)."""
    if step < copy_updates:
        return 0.0
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, decay: float, average_buffers: bool | str
) -> None:
    """In place: teacher = decay * teacher + (1 - decay) * student, for every parameter.

    Floating buffers (BatchNorm running statistics) are averaged the same way when
    `average_buffers` (iMAS, AugSeg), else copied from the student; integer buffers are copied.
    `average_buffers="own"` leaves every buffer alone: the teacher's BatchNorm statistics are
    those of its own train-mode forwards (U2PL's mean teacher, whose EMA covers parameters only).
    The two networks must have the same structure (the teacher is a deep copy of the student).
    """
    weight = 1.0 - decay
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), weight)
    if average_buffers == "own":
        return
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if average_buffers and t.is_floating_point():
            t.lerp_(s, weight)
        else:
            t.copy_(s)


class EMATeacher(nn.Module):
    """A frozen copy of the student, moved towards it by `update` and always predicting in eval mode.

    As a submodule of the LightningModule its weights are in `state_dict` (keys `<name>.network.*`),
    so checkpoints carry it and resume continues it exactly; the update counter belongs to the
    method. Its parameters never require grad, so they stay out of the optimizer and of DDP's
    gradient reduction: build it before DDP wraps anything.

    Why not `torch.optim.swa_utils.AveragedModel` (with `get_ema_multi_avg_fn`, `use_buffers`):
    its decay is fixed when built (a ramp needs a custom function keyed on its own `n_averaged`,
    not on the method's counter); with `use_buffers=True` it averages integer buffers too and
    truncates them, so the teacher's `num_batches_tracked` falls ever further behind; with
    `use_buffers=False` it copies every buffer and cannot average BatchNorm statistics as the
    public code does; and its forward runs in whatever mode the parent is in.
    Why not Lightning's `WeightAveraging`/`EMAWeightAveraging` callback (2.6): it averages the
    whole LightningModule into a model held by the callback, swaps the average in for validation
    and writes it into the checkpoint's `state_dict` in place of the trained weights. A teacher
    must instead predict inside `training_step` (pseudo-labels, hardness) while the student trains,
    and its updates are keyed on `trainer.global_step`, not on the method's own counter.
    """

    def __init__(self, student: nn.Module, alpha: float, average_buffers: bool | str = True):
        super().__init__()
        self.network = copy.deepcopy(student)
        self.network.requires_grad_(False)
        self.network.eval()
        self.alpha = alpha
        self.average_buffers = average_buffers

    def update(self, student: nn.Module, step: int, copy_updates: int = 0) -> float:
        """One EMA update after optimizer step number `step` (0-based); returns the decay used.
        The first `copy_updates` updates copy the student (see `ema_decay`)."""
        decay = ema_decay(step, self.alpha, copy_updates)
        ema_update(self.network, student, decay, self.average_buffers)
        return decay

    def train(self, mode: bool = True) -> EMATeacher:
        # The parent's train()/eval() reaches every submodule; the teacher stays in eval mode.
        super().train(mode)
        self.network.eval()
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        with self.predicting():
            return self.network(*args, **kwargs)

    @torch.no_grad()
    def with_batch_statistics(self, *args, **kwargs):
        """A forward in train mode, no gradient: BatchNorm normalises with the batch's own
        statistics and moves the teacher's running ones (the U2PL and CSS teachers' forwards)."""
        self.network.train()
        try:
            return self.network(*args, **kwargs)
        finally:
            self.network.eval()

    @contextmanager
    def predicting(self) -> Iterator[nn.Module]:
        """The network in eval mode, even if someone switched it to train mode directly."""
        was_training = self.network.training
        self.network.eval()
        try:
            yield self.network
        finally:
            self.network.train(was_training)
