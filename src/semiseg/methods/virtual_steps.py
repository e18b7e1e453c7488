"""What the methods that take several optimizer steps per counted iteration share (FST's
look-ahead, semi-supervised and domain-adaptive): backward and step through Lightning with only
the final step counted, and the snapshot that puts the student (and, after a non-finite loss,
everything) back where the iteration began.

The class using `VirtualSteps` keeps its teacher in `self.teacher.network`, its update counter in
`self.ema_updates` and its restore choice in `self.restore` (`parameters` | `all`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from semiseg.errors import ConfigError

# step(loss, final): backward and optimizer step; `final` is the iteration's counted step.
Step = Callable[[Tensor, bool], None]


class NonFiniteLoss(Exception):
    """A loss was NaN or inf on this or another rank: the iteration is abandoned."""

    def __init__(self, loss: Tensor, gradients: bool = False):
        super().__init__(float(loss.detach()))
        self.loss, self.gradients = loss, gradients  # gradients: a finite loss, NaN gradients


class VirtualSteps:
    """Mixin for a SemiSegModule subclass (it uses its optimizer, poly schedule and trainer)."""

    def configure_virtual_steps(self, variant: str, k, restore: str, k0_is: str) -> None:
        """Check and keep `method.variant`, `method.k` and `method.restore`; `k0_is` names what
        k=0 runs (for the error line)."""
        if variant not in ("D", "W"):
            raise ConfigError(f"method.variant={variant!r}: use D (look-ahead) or W (averaged)")
        if int(k) < 0:
            raise ConfigError(f"method.k={k}: the number of virtual steps, 0 for {k0_is}")
        if restore not in ("parameters", "all"):
            raise ConfigError(f"method.restore={restore!r}: use parameters or all")
        self.variant, self.k, self.restore = variant, int(k), restore

    def lightning_step(self, loss: Tensor, final: bool) -> None:
        """Backward and optimizer step through Lightning; only the final one moves global_step."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if not self._all_finite(loss):  # a collective: every rank decides alike
            raise NonFiniteLoss(loss)
        self.manual_backward(loss)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None:
            if not self._gradients_finite():  # the same on every rank (averaged by DDP)
                raise NonFiniteLoss(loss, gradients=True)
        scale = scaler.get_scale() if scaler is not None else None
        if final:
            iteration = self.global_step
            optimizer.step()
            self.poly_update(optimizer, iteration)
        else:
            # LightningOptimizer.step is this call between the loop's step-counter hooks.
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=_no_closure)
        if scaler is not None and scaler.get_scale() < scale:
            # The 16-mixed GradScaler found inf/NaN gradients, skipped this step and lowered
            # its scale: the iteration is abandoned as after NaN gradients (student, teacher,
            # optimizer state and EMA counter put back; no EMA update after a step not taken).
            # A skipped final step still counts, as in SemiSegModule.optimizer_step_with.
            raise NonFiniteLoss(loss, gradients=True)

    @torch.no_grad()
    def _snapshot(self, optimizer) -> dict:
        return {
            "params": [p.detach().clone() for p in self.model.parameters()],
            "buffers": [b.detach().clone() for b in self.model.buffers()],
            "optimizer": _copy_state(optimizer.state),
            "teacher": [t.detach().clone() for t in self.teacher.network.state_dict().values()],
            "ema_updates": self.ema_updates,
        }

    @torch.no_grad()
    def _restore(self, start: dict, optimizer, everything: bool = False) -> None:
        for p, saved in zip(self.model.parameters(), start["params"], strict=True):
            p.copy_(saved)
        if self.restore == "all" or everything:
            for b, saved in zip(self.model.buffers(), start["buffers"], strict=True):
                b.copy_(saved)
            optimizer.state.clear()
            optimizer.state.update(_copy_state(start["optimizer"]))
        if everything:
            teacher = self.teacher.network.state_dict().values()
            for t, saved in zip(teacher, start["teacher"], strict=True):
                t.copy_(saved)
            self.ema_updates = start["ema_updates"]


@torch.no_grad()
def average_parameters_into(model, total: list[Tensor], count: int) -> None:
    """Write the average of `count` summed parameter sets into `model` (FST-W's model soup)."""
    for p, t in zip(model.parameters(), total, strict=True):
        p.copy_(t.div_(count))


def _copy_state(state: dict) -> dict:
    return {
        p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
        for p, s in state.items()
    }


def _no_closure() -> None:
    return None
