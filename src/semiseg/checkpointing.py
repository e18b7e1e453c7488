"""Checkpoints that survive crashes and preemption.

- `AtomicCheckpointIO` writes every checkpoint beside its target and renames it into place.
- `LastCheckpoint` keeps `checkpoints/last.ckpt` current: after every validation, every
  `checkpoint_every` optimizer steps, and on SIGTERM (what clusters send before preempting a job),
  after which the run stops with exit status 143.
- `resume_checkpoint` turns `resume=auto|PATH` into the checkpoint to continue from.

All saves happen at a step boundary, when the previous step (and its validation, if one was due)
is complete, so a resumed run continues exactly where the saved one stood.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from semiseg.errors import ConfigError

LAST = "last.ckpt"
BEST = "best.ckpt"
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write the checkpoint next to its target, then rename it into place.

    A run killed while saving keeps the previous last.ckpt/best.ckpt intact.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class Preempted(Exception):
    """Raised inside `trainer.fit` once the SIGTERM checkpoint is written."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {path}")
        self.step = step
        self.path = path


class LastCheckpoint(Callback):
    """checkpoints/last.ckpt after each validation, every `every_n_steps` steps, and on SIGTERM.

    Lightning's own SIGTERM handling stops without a checkpoint (and its handler runs a collective
    inside the signal handler); this callback replaces the handler for the duration of `fit` with
    one that only sets a flag. At the next step boundary the ranks agree (one tiny all-reduce),
    all of them take part in the save, and `Preempted` ends `fit`.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = int(every_n_steps or 0)
        self.saved_step = -1
        self.signal_received: int | None = None
        self._previous_handler = None
        self._at_batch_start = False

    # -------------------------------------------------------------- the signal
    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its handlers just before the fit loop starts; replace them here.
        self.saved_step = trainer.global_step  # a resumed run does not re-save its checkpoint
        self.signal_received = None
        try:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread: leave the handlers alone
            self._previous_handler = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handler()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_signal(self, signum, frame) -> None:
        self.signal_received = signum

    # -------------------------------------------------------------- the saves
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Step `global_step` is complete here, including the validation it may have triggered.
        stop = self.signal_received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        step = trainer.global_step
        periodic = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if not (stop or periodic):
            return
        # A checkpoint written at this step already (after its validation, which Lightning
        # resumes natively) is the state to keep: it is not written twice.
        self._at_batch_start = True
        try:
            self.save(trainer)
        finally:
            self._at_batch_start = False
        if stop:
            raise Preempted(step, self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._at_batch_start:
            return
        # Lightning counts the batch just fetched as "ready" before this hook; a restart does not
        # undo that in its running total, and would shift the validation schedule by one step.
        # Record the loop as it stood at the end of the previous step, which Lightning resumes
        # exactly (the fetched batch is drawn again).
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress:
            for counts in (progress["total"], progress["current"]):
                counts["ready"] = counts["started"] = counts["completed"]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.save(trainer, force=True)  # the checkpoint now carries this validation

    def save(self, trainer, force: bool = False) -> None:
        if force or self.saved_step != trainer.global_step:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.path)
            self.saved_step = trainer.global_step


def resume_checkpoint(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """`resume=auto`: the run directory's last.ckpt if there is one (else start afresh, so the
    same command serves the first launch and every requeue); `resume=PATH`: that file."""
    if resume in (None, "", False, "null", "none"):
        return None
    if str(resume) == "auto":
        last = Path(checkpoint_dir) / LAST
        return last if last.is_file() else None
    path = Path(str(resume))
    if path.is_dir():
        path = path / LAST if (path / LAST).is_file() else path / "checkpoints" / LAST
    if not path.is_file():
        raise ConfigError(
            f"resume={resume}: no checkpoint there; give a .ckpt file, a run directory, or auto"
        )
    return path
