"""One training run per folder.

Two launches in the same second (a job array without -m, a shell loop with &) would otherwise
share a run folder: interleaved checkpoint writes, and the second logger deleting the first's
metrics.csv. Rank 0 holds `<run dir>/run.lock` (host and pid) while it trains; a second run in
that folder stops in one line. A lock whose process is gone (a kill -9, a crash) is taken over.
A results.json left by an earlier run is moved aside (results.previous.json) when a run starts,
so report and compare never pair it with this run's overrides.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from semiseg.errors import ConfigError

LOCK = "run.lock"
RESULTS = "results.json"


def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # another machine's process: it cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, folder: Path, resume: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.resume = resume  # a resumed run takes over a lock of another machine's dead job
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock (or fail in one line); returns a note to print, if any."""
        self.folder.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(3):  # a stale lock removed by a racing process: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                host, pid = self._owner()
                if (
                    pid is not None
                    and _alive(host, pid)
                    and not (self.resume and host != socket.gethostname())
                ):
                    raise ConfigError(
                        f"{self.folder} is in use by another run (pid {pid} on {host}): give this "
                        "run its own folder (hydra.run.dir=DIR), or wait for that run to end"
                    ) from None
                note = f"note: took over {self.path} of a run that is gone (pid {pid} on {host})"
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return note
        raise ConfigError(f"cannot take {self.path}: another process keeps replacing it")

    def _owner(self) -> tuple[str, int | None]:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return "?", None  # empty or half-written: its writer died before finishing it

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def move_old_results(folder: Path) -> str | None:
    """Move an earlier run's results.json aside; returns the note to print."""
    old = Path(folder) / RESULTS
    if not old.is_file():
        return None
    aside = old.with_name("results.previous.json")
    os.replace(old, aside)
    return f"note: the results.json of an earlier run in {folder} moved to {aside.name}"
