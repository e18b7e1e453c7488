"""Pseudo-label trust at every validation of a training run (selection/trust.py's counts).

For a method with a confidence threshold (`tau`: FixMatch, UniMatch, the EMA family...), each
validation also counts, on the labeled validation items, the pseudo-labels of the network that
makes them (the EMA teacher where the method has one and validates it, else the evaluated
network) at the method's current threshold, and logs them as `trust/*`: per class precision and
coverage (percent) and the ECE (percent) of its top-class confidence, into the CSV metrics and,
as one panel section, the W&B dashboard. Every task kind counts them as its validation predicts:
the pixels of natural images; every slice of ACDC's validation volumes (each slice predicted at
crop_size, the probabilities resized back to the slice, as its Dice); the change mask of each
change pair (classes `unchanged` and `changed`).

`trust.target_precision=P` also sets the method's threshold after each validation to the lowest
of trust.TAU_GRID whose pseudo-labels reach precision P over all classes on those images (the
threshold read off the calibration curve); when none does, the threshold stays. The threshold
set is logged (`trust/tau`) and kept in the checkpoint, so a resumed run goes on with it.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from semiseg.errors import ConfigError
from semiseg.selection import trust
from semiseg.tasks.base import Task

COUNT_FIELDS = (
    "pseudo",
    "pseudo_correct",
    "gt",
    "gt_covered",
    "bin_count",
    "bin_conf",
    "bin_correct",
)


def check_target(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(
            f"trust.target_precision={value}: give a precision in (0, 1], e.g. 0.99, or null"
        )
    return float(value)


def logged_values(counts: trust.TrustCounts, class_names: list[str]) -> dict[str, float]:
    """`trust/precision_<class>`, `trust/coverage_<class>` (percent, NaN where undefined) and
    `trust/ece` (percent)."""
    values = {}
    for kind, ratios in (("precision", counts.precision()), ("coverage", counts.coverage())):
        for name, ratio in zip(class_names, ratios.tolist(), strict=True):
            values[f"trust/{kind}_{name}"] = 100.0 * ratio
    values["trust/ece"] = 100.0 * counts.ece()
    return values


class PseudoLabelTrust(Callback):
    def __init__(self, target_precision=None):
        self.target_precision = check_target(target_precision)
        self.tau_set: float | None = None  # the threshold set from the calibration curve

    @staticmethod
    def applies(pl_module) -> bool:
        return isinstance(getattr(pl_module, "tau", None), int | float) and isinstance(
            getattr(pl_module, "task", None), Task
        )

    def on_train_start(self, trainer, pl_module) -> None:
        if self.tau_set is not None and self.applies(pl_module):
            pl_module.tau = self.tau_set  # a resumed run keeps the threshold it had set

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not self.applies(pl_module):
            return
        task, classes = pl_module.task, pl_module.task.num_classes
        task.trust = trust.TrustCounts(classes, tau=float(pl_module.tau))
        task.trust_grid = (
            {t: trust.TrustCounts(classes, tau=t) for t in trust.TAU_GRID}
            if self.target_precision is not None
            else {}
        )
        networks = pl_module.validated_networks()
        task.trust_network = "teacher" if "teacher" in networks else pl_module.eval_network_name

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        task = getattr(pl_module, "task", None)
        if not self.applies(pl_module) or task.trust is None:
            return
        counted, grid = task.trust, task.trust_grid
        task.trust, task.trust_grid, task.trust_network = None, {}, None
        for counts in (counted, *grid.values()):
            sum_over_ranks(trainer, pl_module, counts)
        if trainer.sanity_checking:
            return
        values = logged_values(counted, task.class_names)
        if self.target_precision is not None:
            tau = trust.threshold_for_precision(grid, self.target_precision)
            if tau is not None:
                pl_module.tau = self.tau_set = tau
        values["trust/tau"] = float(pl_module.tau)
        pl_module.log_dict(values, sync_dist=False)  # summed counts: the same on every rank

    def state_dict(self) -> dict:
        return {"tau_set": self.tau_set}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tau_set = state_dict.get("tau_set")


def sum_over_ranks(trainer, pl_module, counts: trust.TrustCounts) -> None:
    """The counts summed over the processes (every rank validated its share of the images)."""
    if trainer.world_size == 1:
        return
    for field in COUNT_FIELDS:
        total = trainer.strategy.reduce(
            getattr(counts, field).to(pl_module.device), reduce_op="sum"
        )
        setattr(counts, field, total.cpu())
