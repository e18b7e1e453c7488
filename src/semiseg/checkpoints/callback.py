"""The checkpoints of a training run: checkpoints/last.ckpt and checkpoints/best.ckpt.

`RunCheckpoints` keeps `checkpoints/last.ckpt` current (after every validation, every
`checkpoint_every` optimizer steps, on SIGTERM, before a data read error stops the run) and writes
`checkpoints/best.ckpt` right after the validation that set the best mIoU.

All saves happen at a step boundary or at the start of a validation, so a resumed run continues
exactly where the saved one stood (an abandoned validation is run again from its first image).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint

from semiseg.checkpoints.io import BEST, LAST, CheckpointWriteError, copy_atomic, peek
from semiseg.checkpoints.preemption import Preempted, Sigterm
from semiseg.data.splits import SplitError

# Lightning's private loop-progress entries that `on_save_checkpoint` rewrites, under
# checkpoint["loops"]["fit_loop"] (tests/test_checkpointing.py fails when Lightning renames them).
FIT_LOOP = "fit_loop"
TRAIN_PROGRESS = "epoch_loop.batch_progress"  # "total" and "current": ready, started, completed
VAL_PROGRESS = "epoch_loop.val_loop.batch_progress"  # ... ready, started, processed, completed


class RunCheckpoints(Checkpoint):
    """checkpoints/last.ckpt and checkpoints/best.ckpt, owned by the project (not ModelCheckpoint,
    which Lightning runs after every other callback, so last.ckpt recorded its best score one
    validation late and a resumed run could overwrite best.ckpt with a worse model).

    best.ckpt is last.ckpt copied right after the validation that set the best mIoU, so it holds
    exactly the weights of results.json's best_val_miou; the checkpoints record that step
    (`best_step`), and a resumed run puts the matching file back in place if a kill came between
    the two writes or the run continues in a new directory. The checkpoints also record the time
    spent so far, so `wall_time_s` adds up every segment of a resumed run.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int | None = None,
        sigterm: Sigterm | None = None,
        started: float | None = None,
    ):
        self.dirpath = Path(dirpath)
        self.path = self.dirpath / LAST
        self.best_path = self.dirpath / BEST
        self.every_n_steps = int(every_n_steps or 0)
        self.sigterm = sigterm or Sigterm()
        self.started = time.time() if started is None else started
        self.earlier_s = 0.0  # time spent in the segments before this one (resumed runs)
        self.best_step: int | None = None
        self.saved_step = -1
        self.saved_on_error: int | None = None  # the step saved before a data error stopped it
        self._rewind: str | None = None  # how to record the loops in a save: "batch", "validation"
        self._val_checks = 0  # validation batches at which every rank looks at the signal
        self._best_before = -math.inf
        self._settled = False

    # -------------------------------------------------------------- state in the checkpoint
    def state_dict(self) -> dict:
        return {"best_step": self.best_step, "elapsed_s": self.elapsed_s()}

    def load_state_dict(self, state: dict) -> None:
        self.best_step = state.get("best_step")
        self.earlier_s = float(state.get("elapsed_s", 0.0))

    def elapsed_s(self) -> float:
        return self.earlier_s + time.time() - self.started

    # -------------------------------------------------------------- the signal
    def setup(self, trainer, pl_module, stage: str) -> None:
        self.sigterm.deferred = True  # from here on a SIGTERM is acted on at a safe point

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its handlers just before the loops start; put ours back.
        self.sigterm.install()
        self.saved_step = trainer.global_step  # a resumed run does not re-save its checkpoint
        if trainer.ckpt_path:
            self.settle_best(trainer, pl_module, Path(trainer.ckpt_path))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Step `global_step` is complete here, including the validation it may have triggered.
        stop = self.sigterm.agreed(trainer)
        step = trainer.global_step
        periodic = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if stop or periodic:
            # A checkpoint written at this step already (after its validation) is not rewritten.
            self.save(trainer, rewind="batch")
        if stop:
            raise Preempted(step, self.path)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.sigterm.install()
        self._best_before = getattr(pl_module, "best_score", -math.inf)
        # Ranks may hold one validation image more than others: they look at the signal (a
        # collective) only for the batches that every rank runs.
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else None
        batches = batches if batches is not None else trainer.num_val_batches
        count = torch.tensor(float(min(batches, default=0)), device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
        self._val_checks = int(count.item()) if math.isfinite(count.item()) else 1 << 62

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx >= self._val_checks or not self.sigterm.agreed(trainer):
            return
        # Abandon the validation (on Cityscapes it can outlast the grace period before SIGKILL):
        # the weights are those of a complete step, and a resumed run validates them again.
        if trainer.sanity_checking:
            raise Preempted(trainer.global_step, self.path if self.path.is_file() else None)
        self.save(trainer, rewind="validation" if trainer.state.fn == "fit" else None)
        raise Preempted(trainer.global_step, self.path)

    # -------------------------------------------------------------- the saves
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        improved = getattr(pl_module, "best_score", -math.inf) > self._best_before
        if improved:
            self.best_step = trainer.global_step
        self.save(trainer, force=True)  # last.ckpt now carries this validation
        if improved:
            self._copy(self.path, self.best_path, trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        # An unreadable image (found when loaded) stops the run between two steps: keep them.
        # Under DDP the other ranks are not here to take part in a save.
        if isinstance(exception, SplitError) and trainer.world_size == 1:
            rewind = "validation" if trainer.validating and trainer.state.fn == "fit" else "batch"
            self.save(trainer, rewind=rewind)
            self.saved_on_error = trainer.global_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        loops = checkpoint.get("loops", {}).get(FIT_LOOP, {})
        if self._rewind == "batch":
            # Lightning counts the batch just fetched as "ready" before this hook; a restart does
            # not undo that in its running total, and would shift the validation schedule by one
            # step. Record the loop as it stood at the end of the previous step, which Lightning
            # resumes exactly (the fetched batch is drawn again).
            progress = loops.get(TRAIN_PROGRESS)
            if progress:
                for counts in (progress["total"], progress["current"]):
                    counts["ready"] = counts["started"] = counts["completed"]
        elif self._rewind == "validation":
            # Record the validation as started and no image done: Lightning then runs it again
            # from its first image when the run resumes (its partial confusion matrix is lost).
            progress = loops.get(VAL_PROGRESS)
            if progress:
                before = progress["total"]["completed"] - progress["current"]["completed"]
                progress["current"].update(ready=1, started=1, processed=0, completed=0)
                progress["total"].update(
                    ready=before + 1, started=before + 1, processed=before, completed=before
                )

    def save(self, trainer, force: bool = False, rewind: str | None = None) -> None:
        if force or self.saved_step != trainer.global_step:
            self._rewind = rewind
            error = None
            try:
                # a resumable checkpoint (optimizer, loops, callbacks), said so to Lightning
                trainer.save_checkpoint(self.path, weights_only=False)
            except CheckpointWriteError as err:  # rank 0's write failed before the barrier
                error = err
                if trainer.world_size > 1:  # the barrier the other ranks wait in
                    trainer.strategy.barrier("Trainer.save_checkpoint")
            finally:
                self._rewind = None
            raise_on_every_rank(trainer, error)
            self.saved_step = trainer.global_step

    def _copy(self, source: Path, target: Path, trainer) -> None:
        error = None
        if trainer.is_global_zero:
            try:
                copy_atomic(source, target)
            except CheckpointWriteError as err:
                error = err
        trainer.strategy.barrier("semiseg.best_checkpoint")
        raise_on_every_rank(trainer, error)

    # -------------------------------------------------------------- best.ckpt after a resume
    def settle_best(self, trainer, pl_module, resumed: Path) -> None:
        """Make best.ckpt the checkpoint of the restored best validation (`best_step`). Called
        when training starts, and by the runner after `fit` (a run resumed at its last step
        does not start training)."""
        best = getattr(pl_module, "best_score", None)
        if self._settled or self.best_step is None or best is None:
            return
        self._settled = True
        found = None
        if trainer.is_global_zero:
            found = self._find_best(Path(resumed), best)
        found = trainer.strategy.broadcast(found, src=0)
        if found == "missing":
            # The weights of the best validation are gone (only last.ckpt was copied): best.ckpt
            # and best_val_score start again from the validations of this run.
            if trainer.is_global_zero:
                print(
                    f"note: no best.ckpt of step {self.best_step} (score {best:.2f}) next to "
                    f"{trainer.ckpt_path}; best.ckpt and best_val_score restart from here",
                    flush=True,
                )
            pl_module.best_score = -math.inf
            self.best_step = None
        elif found is not None:
            self._copy(Path(found), self.best_path, trainer)

    def _find_best(self, resumed: Path, best: float) -> str | None:
        """None when best.ckpt is right already, else the file to copy there, or "missing"."""
        if _holds_best(self.best_path, self.best_step, best):
            return None
        if peek(resumed).get("global_step") == self.best_step:  # saved right after it: the one
            return str(resumed)
        sibling = resumed.parent / BEST
        if sibling != self.best_path and _holds_best(sibling, self.best_step, best):
            return str(sibling)
        return "missing"


def _holds_best(path: Path, step: int, best: float) -> bool:
    if not path.is_file():
        return False
    try:
        saved = peek(path)
    except Exception:  # a foreign or broken file is not it
        return False
    return saved.get("global_step") == step and saved.get("semiseg", {}).get("best_score") == best


def raise_on_every_rank(trainer, error: CheckpointWriteError | None) -> None:
    """Rank 0 writes the checkpoints; its write error (a full disk) is raised on every rank.
    Raised on rank 0 alone, the other ranks would wait in their next collective until its
    timeout (a hang of up to 30 minutes under srun, which has no agent to end them)."""
    if trainer.world_size > 1:
        message = trainer.strategy.broadcast(str(error) if error else None, src=0)
        if message and error is None:
            error = CheckpointWriteError(message)
    if error is not None:
        raise error
