"""FST for domain adaptation (mmseg/models/uda/fst_d.py and fst_w.py of FST's code): the DACS
step of dacs.py, with the EMA teacher moved into the future before the student's real step.

`ema_updates` counts the student's forwards (the public `local_iter`); t below is its value
when the update is made. The first iteration is the same for both variants: the teacher becomes
the student, one forward and step, one EMA update (t = 1). Every later iteration:

- `variant=D` (fst_d.py): remember the parameters; K times: EMA update, forward, step; EMA
  update; restore the parameters; forward, step. K + 1 EMA updates, none after the real step.
- `variant=W` (fst_w.py): remember the parameters; K students, each from the remembered
  parameters (restored before all but the first), one forward and step on a future batch of its
  own; the teacher's EMA update towards their average; restore; forward and step on this
  iteration's batch; EMA update. The loaders yield (K + 1) batches per iteration, the first the
  present (`data_requirements`).

`k=0` is DACS itself (dacs.py: one EMA update before each forward). Every update is of the
parameters only, alpha 0.999 in the public configs. What `restore=parameters` (the public code)
puts back is the parameters only: AdamW's moments and the BatchNorm statistics keep what the
virtual steps did to them (`restore=all`: those too). Virtual steps do not count as iterations
(global_step, the schedule); all K + 1 use the iteration's learning rate. A NaN or inf loss at
any of them abandons the whole iteration (student, optimizer, teacher and counter put back).
"""

from __future__ import annotations

from typing import Any

import torch

from semiseg.data.batch import TrainBatch
from semiseg.methods.dacs import DACS
from semiseg.methods.virtual_steps import (
    NonFiniteLoss,
    Step,
    VirtualSteps,
    average_parameters_into,
)


class FSTUDA(VirtualSteps, DACS):
    several_steps_per_batch = True

    def __init__(
        self,
        *args,
        variant: str = "D",
        k: int = 3,
        restore: str = "parameters",
        batch_size: int | None = None,  # data.batch_size, read by data_requirements (FST-W)
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.configure_virtual_steps(variant, k, restore, k0_is="DACS")

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        needs = super().data_requirements(method_cfg)
        if method_cfg.get("variant", "D") == "W" and int(method_cfg.get("k", 3)) > 0:
            needs["batch_size"] = int(method_cfg.batch_size) * (int(method_cfg.k) + 1)
        return needs

    def training_step(self, batch, batch_idx: int) -> None:
        if self.k == 0:
            return DACS.training_step(self, batch, batch_idx)
        batch = TrainBatch.parse(batch)
        try:
            losses = self.iteration(batch, self.optimizers().optimizer, self.lightning_step)
        except NonFiniteLoss as bad:
            self._skip_step(bad.loss, bad.gradients)
            return
        self.nonfinite_in_a_row = 0
        present = batch.chunk(self.k + 1)[0] if self.variant == "W" else batch
        self.log_train(losses, batch_size=len(present.labeled))

    def iteration(self, batch, optimizer: torch.optim.Optimizer, step: Step) -> dict:
        start = self._snapshot(optimizer)
        try:
            if self.ema_updates == 0:
                losses = self._first(batch, step)
            elif self.variant == "D":
                losses = self._look_ahead(batch, step, start, optimizer)
            else:
                losses = self._future_average(batch, step, start, optimizer)
        except NonFiniteLoss:
            self._restore(start, optimizer, everything=True)
            raise
        return {**losses, "ema_decay": self.last_decay}

    def _forward_and_step(self, batch, step: Step, final: bool) -> dict:
        losses = self.training_losses(batch)
        self.ema_updates += 1
        step(losses["loss"], final)
        return losses

    def _first(self, batch, step: Step) -> dict:
        present = batch.chunk(self.k + 1)[0] if self.variant == "W" else batch
        self.teacher_before_forward()  # the teacher becomes the student
        losses = self._forward_and_step(present, step, True)
        self.ema_parameters(self.ema_updates)
        return losses

    def _look_ahead(self, batch, step: Step, start: dict, optimizer) -> dict:
        for _ in range(self.k):
            self.ema_parameters(self.ema_updates)
            self._forward_and_step(batch, step, False)
        self.ema_parameters(self.ema_updates)
        self._restore(start, optimizer)
        return self._forward_and_step(batch, step, True)  # taught by the teacher ahead

    def _future_average(self, batch, step: Step, start: dict, optimizer) -> dict:
        present, *futures = batch.chunk(self.k + 1)
        total = None
        for i, future in enumerate(futures):
            if i > 0:
                self._restore(start, optimizer)
            self._forward_and_step(future, step, False)
            with torch.no_grad():
                params = [p.detach().clone() for p in self.model.parameters()]
                total = (
                    params
                    if total is None
                    else [t.add_(p) for t, p in zip(total, params, strict=True)]
                )
        # The teacher towards the K students' average ("model soup"), put in the student for
        # the update; the restore right after brings the remembered parameters back.
        average_parameters_into(self.model, total, self.k)
        self.ema_parameters(self.ema_updates)
        self._restore(start, optimizer)
        losses = self._forward_and_step(present, step, True)
        self.ema_parameters(self.ema_updates)
        return losses
