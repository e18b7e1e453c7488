"""Checkpoint files written atomically, and read without their weights.

`AtomicCheckpointIO` writes every checkpoint beside its target, syncs it to disk and renames it into
place; a failed write (a full disk) leaves the previous checkpoint and no temporary file.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from semiseg.errors import FaultError, one_line

LAST = "last.ckpt"
BEST = "best.ckpt"


class CheckpointWriteError(FaultError):
    """A checkpoint could not be written (a full or read-only disk); the previous one is kept."""


def _write_atomic(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, sync it, rename it into place and sync
    the folder: after a crash or power loss the old or the new file is there, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            try:
                write(writer)
            except RuntimeError:  # torch's zip writer hides the OSError behind its own message
                raise writer.error or sys.exc_info()[1] from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (OSError, RuntimeError) as err:  # torch reports some write errors as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        kept = f"the previous {path.name} is kept" if path.is_file() else "nothing was written"
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {reason.splitlines()[0]}; {kept}. Free space "
            "(or make the folder writable), then continue with the same command plus resume=auto"
        ) from None


class _Writer:
    """A file's `write`, remembering the OSError it raised (a full disk)."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def copy_atomic(source: Path, target: Path) -> None:
    with open(source, "rb") as src:
        _write_atomic(target, lambda f: shutil.copyfileobj(src, f, 16 << 20))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write the checkpoint next to its target, sync it, then rename it into place."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        _write_atomic(Path(path), lambda f: torch.save(checkpoint, f))


def peek(path: Path) -> dict:
    """A checkpoint's entries without reading its weights into memory (and without running any
    code a checkpoint file could carry)."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def why_unreadable(err: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line. A file that carries code
    (a pickled object whose loading would call a function) is named as such: torch's own message
    is a dozen lines that end by suggesting weights_only=False, which would run that code."""
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = found.group(1) if found else "an object"
        return (
            f"it carries code (it would call {what} when loaded), which semiseg never runs: "
            "use a checkpoint written by train.py"
        )
    lines = one_line(err).splitlines()
    return lines[0] if lines else type(err).__name__
