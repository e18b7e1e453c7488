"""Preemption signals: `Sigterm` turns SIGTERM (what clusters send before preempting a job) into
`Preempted`, which the runner ends with exit status 143 (PREEMPTED_EXIT_CODE); a launcher's own
signal (`launcher_signal()`) is handled alike and then passed on to the launcher.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Preempted(Exception):
    """SIGTERM ended the run; `path` is the checkpoint to continue from (None: none was written)."""

    def __init__(self, step: int | None = None, path: Path | None = None):
        where = f"at step {step}" if step is not None else "before training"
        super().__init__(f"stopped by SIGTERM {where}; checkpoint {path}")
        self.step = step
        self.path = path


def launcher_signal() -> signal.Signals:
    """The signal hydra-submitit-launcher's jobs get `signal_delay_s` before their time limit
    (submitit's SUBMITIT_PREEMPT_SIGNAL, USR2 by default); its handler requeues the job."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class Sigterm:
    """The run's SIGTERM handler. Until `deferred`, a SIGTERM stops the run at once (there is
    nothing to save yet); once training is set up it only records the signal, and the run stops
    at the next safe point (see RunCheckpoints). Used as a context manager around the whole run.

    Lightning's own handler stops without a checkpoint and runs a collective inside the signal
    handler; RunCheckpoints puts this one back whenever Lightning has installed its own.

    A launcher's signal (`launcher_signal()`: submitit's, before the time limit) is treated the
    same way when the process has a Python handler for it (submitit's requeue): the run stops at
    the next safe point with its checkpoint, and `pass_on()` then calls that handler, which
    requeues the job; the requeued job continues with resume=auto. Without such a handler the
    signal keeps its default action.
    """

    def __init__(self):
        self.received = False
        self.deferred = False
        self.signum: int | None = None  # the signal that stopped the run
        self._previous = None
        self._relay = launcher_signal()
        self._relayed = None  # the launcher's handler, when there is one

    def __enter__(self) -> Sigterm:
        self._previous = self.install()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        if self._relayed is not None:
            signal.signal(self._relay, self._relayed)
            self._relayed = None

    def install(self):
        try:
            previous = signal.signal(signal.SIGTERM, self._handle)
            current = signal.getsignal(self._relay)
            if self._relay != signal.SIGTERM and callable(current) and current != self._handle:
                self._relayed = current
                signal.signal(self._relay, self._handle)
            return previous
        except ValueError:  # not the main thread: leave the handlers alone
            return None

    def _handle(self, signum, frame) -> None:
        self.received = True
        if self.signum is None or signum != signal.SIGTERM:
            self.signum = signum
        if not self.deferred:
            raise Preempted()

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    def pass_on(self) -> None:
        """After the run has stopped: hand the launcher's signal to the launcher's own handler
        (submitit: requeue the job, on rank 0, and exit). Nothing for SIGTERM."""
        handler = self._relayed
        if self.signum == self._relay and handler is not None:
            self.__exit__()
            handler(self.signum, None)

    def agreed(self, trainer) -> bool:
        """Whether any rank received the signal (a collective under DDP: call it on all ranks)."""
        if trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(self.received, all=False)
        return self.received
