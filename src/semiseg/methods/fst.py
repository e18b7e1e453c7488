"""FST, "learning from the future" (NeurIPS 2022): the EMA teacher is moved ahead by virtual
student steps before the student takes its real one, so the student learns pseudo-labels from a
teacher "of the future".

The loss is that of FST's semi-supervised code (semi_seg/train_semi.py, U2PL's mean teacher;
`u2pl_step.u2pl_losses`, shared with the mean teacher): the teacher (eval mode) labels the weak
view; with `base=cutmix`, half of the batches (one draw per batch) are CutMixed, image i
receiving a box of half the crop area from image i + 1, labels alike; the student learns the
labeled images (CE, or OHEM) and the pseudo-labels on the weak or mixed view, without
confidence threshold, the top `entropy_drop` of teacher entropy dropped, that entropy from a
second, train-mode teacher forward on the student's batch (`teacher_entropy=train_forward`).
`base=meanteacher` is the same without CutMix: the student sees the image the teacher labelled.

One iteration (`variant=D`, FST-D, `if cfg["trainer"].get("fst")` in train_semi.py): remember
the student's parameters; K times (K = 3 there): EMA update, loss, backward, optimizer step;
EMA update; restore the parameters; loss with the teacher now ahead, backward, step; EMA
update. Every forward draws its own CutMix. `variant=W` (FST-W, mmseg/models/uda/fst_w.py): K
students, each from the remembered parameters, step once on a future batch of their own; the
teacher takes one EMA step towards their average; restore, the real step on this iteration's
batch, EMA update. `k=0` is the baseline without FST (one step, one EMA update: the public
configs without `fst: True`). The "future" batches are drawn with this one: the loaders yield
(K + 1) batches' worth of images per iteration (`data_requirements`); the first is the present.

Only the final step counts: global_step (so max_steps, checkpoint intervals, the poly schedule
and the validation interval) counts iterations. Virtual steps go through the same precision
path (the 16-mixed GradScaler unscales, steps and updates its scale; gradient clipping) but not
through Lightning's step counter. All K + 1 steps use the iteration's learning rate (the public
scheduler steps once per iteration).

What `restore=parameters` (the public code) puts back is the parameters only: the optimizer's
momentum and the BatchNorm statistics keep what the virtual steps did to them. `restore=all`
puts those back too, so the final step is exactly one plain step from where the iteration began.

The teacher, as public by default: the EMA covers the parameters only and its BatchNorm
statistics are those of its own train-mode forwards (`ema_buffers=own`); `ema_warmup=epoch`:
every loss of the first epoch is taught by the student itself (the public
`epoch == sup_only_epoch` reset of the teacher's parameters, so no look-ahead in epoch 0, though
the K virtual steps still run and still move momentum and BatchNorm statistics), and every EMA
update of iteration i uses the decay min(1 - 1/(i + 1), alpha), 0 in the first epoch (the
public teacher shares the student's tensors there, so its updates leave it equal to the student).
Options, not the public code: `ema_warmup=ramp` ramps per update from the first one (the UDA
code's rule), `ema_buffers=true` averages the statistics, `teacher_entropy=pseudo_labels` takes
the entropy of the eval-mode pseudo-label forward. The crops are asked of the data module as
public (`PUBLIC_DATA`). Left different: padded unlabeled pixels (the data module's ignore mask)
are out of the loss and of the percentile; the public crops pad centred, these right/bottom.

A NaN or inf loss on any rank (or NaN/inf gradients of a finite loss, without the GradScaler),
at any of the K + 1 steps, abandons the whole iteration on every
rank (each rank then takes the same number of backward passes): student, BatchNorm statistics,
optimizer state, teacher and its counter go back to where the iteration began, and it does not
count (as `SemiSegModule.optimizer_step_with` does for one step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError
from semiseg.methods.teacher import ema_update
from semiseg.methods.teacher_student import TeacherStudentModule
from semiseg.methods.u2pl_step import check_teacher_options, checked_entropy_drop, u2pl_losses
from semiseg.methods.virtual_steps import NonFiniteLoss, Step, VirtualSteps

__all__ = ["FST", "NonFiniteLoss"]

# The crops of the public semi-supervised code (its dataset/augmentation.py), asked of the data
# module: `RandResize` draws a scale factor half the time in [0.5, 1), else in [1, 2); `Crop`
# pads the labeled mask with 0 (trained as class 0) and the normalised image with 0 (the mean
# colour). `resize=long_side`, `labeled_pad_label=255`, `pad_fill=zero`: UniMatch's crops.
PUBLIC_DATA = {"resize": "scale_halves", "labeled_pad_label": 0, "pad_fill": "mean"}


class FST(VirtualSteps, TeacherStudentModule):
    public_ema_warmup = "epoch"  # the public first epoch and per-iteration ramp, see docstring
    num_strong_views = 0  # the weak view only; CutMix is drawn in the step, per forward
    several_steps_per_batch = True  # K virtual steps and the real one, in `iteration`
    trains_aux_head = True  # the public Cityscapes config's aux_loss (u2pl_step.u2pl_losses)

    def __init__(
        self,
        *args,
        variant: str = "D",
        k: int = 3,
        base: str = "cutmix",
        entropy_drop: float = 0.2,
        cutmix_p: float = 0.5,
        restore: str = "parameters",
        teacher_entropy: str = "train_forward",
        ema_buffers: bool | str = "own",
        batch_size: int | None = None,  # data.batch_size, read by data_requirements (FST-W)
        # read by data_requirements: the data module's crops (see `PUBLIC_DATA`)
        resize: str = "scale_halves",
        labeled_pad_label: int = 0,
        pad_fill: str = "mean",
        aux_weight: float = 0.4,
        **kwargs,
    ):
        super().__init__(*args, ema_buffers=ema_buffers, **kwargs)
        # U2PL's auxiliary head where the model has one (model.aux_head): its labeled loss times
        # aux_weight joins loss_x, as the public Cityscapes config's net.aux_loss.
        self.aux_weight = aux_weight
        self.with_aux = getattr(self.model, "aux", None) is not None
        self.configure_virtual_steps(variant, k, restore, k0_is="none")
        if base not in ("meanteacher", "cutmix"):
            raise ConfigError(f"method.base={base!r}: use meanteacher or cutmix")
        own_forward = teacher_entropy == "train_forward"
        check_teacher_options(teacher_entropy, self.teacher.average_buffers, own_forward)
        self.base, self.teacher_entropy = base, teacher_entropy
        self.cutmix_p = cutmix_p if base == "cutmix" else 0.0
        self.entropy_drop = checked_entropy_drop(entropy_drop)
        self.last_decay = 0.0  # of the teacher's last EMA update, logged
        self.iteration_index = 0  # global_step when this iteration began (the public i_iter)

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        needs = super().data_requirements(method_cfg)
        needs.update({key: method_cfg.get(key, value) for key, value in PUBLIC_DATA.items()})
        if method_cfg.get("variant", "D") == "W":  # this iteration's batch and K future ones
            needs["batch_size"] = int(method_cfg.batch_size) * (int(method_cfg.k) + 1)
        return needs

    # ------------------------------------------------------------------ the loss of one step
    def training_losses(self, batch: TrainBatch) -> dict[str, Tensor]:
        if self._in_first_epoch():  # the public `epoch == sup_only_epoch` reset, every loss
            ema_update(self.teacher.network, self.model, 0.0, self.teacher.average_buffers)
        return u2pl_losses(self, batch, self.cutmix_p, self.entropy_drop, self.teacher_entropy)

    def _in_first_epoch(self) -> bool:
        return self.ema_warmup == "epoch" and self.iteration_index < self.ema_copy_updates()

    # ------------------------------------------------------------------ one iteration
    def training_step(self, batch, batch_idx: int) -> None:
        batch = TrainBatch.parse(batch)
        self.iteration_index = self.global_step
        try:
            losses = self.iteration(batch, self.optimizers().optimizer, self.lightning_step)
        except NonFiniteLoss as bad:
            self._skip_step(
                bad.loss, bad.gradients
            )  # counted, logged; stops after max_nonfinite_steps in a row
            return
        self.nonfinite_in_a_row = 0
        present = batch.chunk(self.k + 1)[0] if self.variant == "W" else batch
        self.log_train(losses, batch_size=len(present.labeled))

    def iteration(self, batch, optimizer: torch.optim.Optimizer, step: Step) -> dict:
        """The K virtual steps and the real one; returns the real step's losses. On
        NonFiniteLoss everything is put back as it was before re-raising."""
        start = self._snapshot(optimizer)
        try:
            if self.k == 0:
                losses = self._without_fst(batch, step)
            elif self.variant == "D":
                losses = self._look_ahead(batch, step, start, optimizer)
            else:
                losses = self._future_average(batch, step, start, optimizer)
        except NonFiniteLoss:
            self._restore(start, optimizer, everything=True)
            raise
        return {**losses, "ema_decay": self.last_decay}

    def _without_fst(self, batch, step: Step) -> dict:
        # The public baselines (the same configs without `fst: True`): one step, one EMA update.
        losses = self.training_losses(batch)
        step(losses["loss"], True)
        self._ema_update()
        return losses

    def _look_ahead(self, batch, step: Step, start: dict, optimizer) -> dict:
        for _ in range(self.k):
            self._ema_update()
            step(self.training_losses(batch)["loss"], False)
        self._ema_update()
        self._restore(start, optimizer)
        losses = self.training_losses(batch)  # pseudo-labels of the teacher from the future
        step(losses["loss"], True)
        self._ema_update()
        return losses

    def _future_average(self, batch, step: Step, start: dict, optimizer) -> dict:
        present, *futures = batch.chunk(self.k + 1)
        total = None
        for i, future in enumerate(futures):
            if i > 0:
                self._restore(start, optimizer)
            step(self.training_losses(future)["loss"], False)
            with torch.no_grad():
                params = [p.detach() for p in self.model.parameters()]
                if total is None:
                    total = [p.clone() for p in params]
                else:
                    for t, p in zip(total, params, strict=True):
                        t.add_(p)
        # The teacher's EMA step towards the average of the K students (its buffers from the
        # last one), written into the student for the update and restored right after.
        with torch.no_grad():
            for p, t in zip(self.model.parameters(), total, strict=True):
                p.copy_(t.div_(self.k))
        self._ema_update()
        self._restore(start, optimizer)
        losses = self.training_losses(present)
        step(losses["loss"], True)
        self._ema_update()
        return losses

    def _ema_update(self) -> None:
        if self.ema_warmup == "epoch":  # the public ramp: every update of an iteration alike
            step, copies = self.iteration_index, self.ema_copy_updates()
        else:  # `ramp`: counted per update
            step, copies = self.ema_updates, 0
        self.last_decay = self.teacher.update(self.model, step, copies)
        self.ema_updates += 1
