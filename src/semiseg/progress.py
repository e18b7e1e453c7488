"""How long a run will take, told before it is long under way, and a progress bar of steps.

Training is step-based (`trainer.max_steps`; Lightning's epochs are -1), so Lightning's own bar
read "Epoch 0/-2" with one epoch's batches and no remaining time. `progress_callbacks` gives:

- `WallTimeEstimate`: times the first steps (the first one, which starts the data workers, is
  not counted) and prints one line with the expected wall time of the steps left; when that is
  more than a day on this machine, one warning line with the settings that would fit (a smaller
  encoder, the fast precision, fewer steps, a GPU). Validations are timed as they happen and
  added to the estimate.
- `StepProgressBar` (when `trainer.enable_progress_bar`): the optimizer steps against
  `max_steps`, with that estimate's remaining time (`eta`), updated at every step.
"""

from __future__ import annotations

import math
import sys
import time

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n

from semiseg.hardware import FAST, precision_name, resolve_precision

DAY_S = 24 * 3600
MEASURE_STEPS = 5  # steps timed before the estimate is printed...
MEASURE_S = 60.0  # ...or this many seconds of them, on a slow machine
SMALL_ENCODERS = ("resnet18", "smp:resnet18", "unet")


def progress_callbacks(trainer_args: dict) -> list[Callback]:
    """The callbacks train.py adds: the wall-time estimate, and the step bar unless
    `trainer.enable_progress_bar=false` (Lightning refuses a bar callback then)."""
    estimate = WallTimeEstimate()
    if trainer_args.get("enable_progress_bar", True):
        return [estimate, StepProgressBar(estimate)]
    return [estimate]


def duration(seconds: float) -> str:
    """45 s, 12 min, 3 h 05 min, 2.5 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_S:
        hours, rest = divmod(int(seconds), 3600)
        return f"{hours} h {rest // 60:02d} min"
    return f"{seconds / DAY_S:.1f} days"


def clock_time(seconds: float) -> str:
    """h:mm:ss, as tqdm shows elapsed time."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _round_down(n: int) -> int:
    """Two significant digits, rounded down (1323 -> 1300)."""
    if n < 100:
        return max(n, 1)
    scale = 10 ** (len(str(n)) - 2)
    return n // scale * scale


class WallTimeEstimate(Callback):
    """Seconds per optimizer step, measured from the first steps on, and per validation."""

    def __init__(self, measure_steps=MEASURE_STEPS, measure_s=MEASURE_S, limit_s=DAY_S, clock=None):
        self.measure_steps, self.measure_s, self.limit_s = measure_steps, measure_s, limit_s
        self.clock = clock or time.perf_counter
        self._start()

    def _start(self) -> None:
        self._last = None  # clock at the last step's end
        self._first_step = None  # global step after the first step, which is not timed
        self._step_now = 0
        self._train_s = 0.0
        self._val_s: list[float] = []
        self._val_start = None
        self._validated = None  # the global step of the last validation
        self.told = False

    # measuring

    def on_train_start(self, trainer, pl_module) -> None:
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        self._step_now = trainer.global_step
        if self._last is None:  # the first step: data workers starting, caches cold
            self._first_step = trainer.global_step
        else:
            self._train_s += now - self._last
        self._last = now
        if not self.told and self.steps_timed > 0:
            if self.steps_timed >= self.measure_steps or self._train_s >= self.measure_s:
                self.told = True
                self._tell(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val_start = self.clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_start is None:
            return
        spent = self.clock() - self._val_start
        self._val_s.append(spent)
        self._validated = trainer.global_step
        if self._last is not None:  # the next step's time does not include the validation
            self._last += spent
        self._val_start = None

    # estimating

    @property
    def steps_timed(self) -> int:
        return 0 if self._first_step is None else self._step_now - self._first_step

    @property
    def seconds_per_step(self) -> float | None:
        return self._train_s / self.steps_timed if self.steps_timed > 0 else None

    @property
    def seconds_per_validation(self) -> float | None:
        return sum(self._val_s) / len(self._val_s) if self._val_s else None

    def _steps_left(self, trainer) -> int | None:
        if not trainer.max_steps or trainer.max_steps < 0:
            return None
        return max(trainer.max_steps - trainer.global_step, 0)

    def validations_left(self, trainer) -> int:
        """Validations still to run: every val_check_interval steps, and one at the end when
        max_steps is not a multiple of it (train.py validates the final weights)."""
        interval = trainer.val_check_batch
        if not trainer.enable_validation or not isinstance(interval, int) or interval <= 0:
            return 0
        step, last = trainer.global_step, trainer.max_steps
        if last is None or last < 0:
            return 0
        left = last // interval - step // interval
        # at a step's end its own validation is still to come
        pending = 0 < step < last and step % interval == 0 and self._validated != step
        return left + int(pending) + (1 if last % interval else 0)

    def remaining_s(self, trainer) -> float | None:
        """Seconds left: the steps at the measured rate, and the validations once one is timed."""
        per_step, steps = self.seconds_per_step, self._steps_left(trainer)
        if per_step is None or steps is None:
            return None
        per_val = self.seconds_per_validation or 0.0
        return steps * per_step + self.validations_left(trainer) * per_val

    def eta(self, trainer) -> str:
        left = self.remaining_s(trainer)
        return "timing" if left is None else clock_time(left)

    # telling

    def _tell(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        steps, per_step = self._steps_left(trainer), self.seconds_per_step
        if steps is None:
            return
        vals = self.validations_left(trainer)
        first, last = self._first_step + 1, self._step_now
        timed = f"step {first}" if first == last else f"steps {first}-{last}"
        line = (
            f"expected wall time: {duration(self.remaining_s(trainer))} for the {steps} steps left "
            f"of trainer.max_steps={trainer.max_steps} ({per_step:.2f} s per step on this "
            f"machine, timed over {timed})"
        )
        if vals:
            per_val = self.seconds_per_validation
            line += f", plus {vals} validation{'s' if vals > 1 else ''}"
            line += f" of {duration(per_val)}" if per_val else " (timed at the first)"
        _say(trainer, line)
        total = steps * per_step
        if total > self.limit_s:
            _say(trainer, self._warning(trainer, pl_module, total, per_step))

    def _warning(self, trainer, pl_module, total: float, per_step: float) -> str:
        on_gpu = trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        ways = []
        model = (getattr(pl_module, "run_config", None) or {}).get("model") or {}
        encoder = model.get("encoder")
        if encoder not in SMALL_ENCODERS:
            ways.append("a smaller encoder (model.encoder=resnet18)")
        fast = resolve_precision(FAST, on_gpu)
        if precision_name(trainer.precision) != fast:
            ways.append(f"trainer.precision=fast ({fast} here)")
        fit = _round_down(int(self.limit_s / per_step))
        ways.append(f"fewer steps (trainer.max_steps={fit} fit in a day at this speed)")
        if not on_gpu:
            ways.append("a GPU")
        return (
            f"warning: at {per_step:.1f} s per step the {self._steps_left(trainer)} steps left "
            f"take about {duration(total)} on this machine; to fit in a day: "
            f"{', '.join(ways[:-1])} or {ways[-1]}"
        )


def _say(trainer, line: str) -> None:
    """Print above the progress bar when there is one."""
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar) and bar.is_enabled:
        bar.print(line)
    else:
        print(line, flush=True)


class StepProgressBar(TQDMProgressBar):
    """Optimizer steps against trainer.max_steps and the remaining time, across epochs."""

    TRAIN_FORMAT = "step {n}/{total} |{bar}| {percentage:3.0f}% [{elapsed}{postfix}]"
    OPEN_FORMAT = "step {n} [{elapsed}{postfix}]"  # no max_steps: no total

    def __init__(self, estimate: WallTimeEstimate, **kwargs):
        super().__init__(**kwargs)
        self.estimate = estimate

    def init_train_tqdm(self) -> Tqdm:
        trainer = self.trainer
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        return Tqdm(
            total=steps,
            initial=trainer.global_step,  # a resumed run continues its count
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.TRAIN_FORMAT if steps else self.OPEN_FORMAT,
        )

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run: epochs do not restart it

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        total = bar.total if bar.total is not None else math.inf
        if self._should_update(trainer.global_step, total):
            _update_n(bar, trainer.global_step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.training or trainer.state.fn == "fit":
            items = {"eta": self.estimate.eta(trainer), **items}
        return items
