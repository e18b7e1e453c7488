"""What the prepare commands share: atomic PNG writes and writing val.txt when it is missing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data.splits import Sample, SplitError, write_list


def save_png(path: Path, values: np.ndarray) -> None:
    """A single-channel PNG, written beside the target and renamed: an interrupted run never
    leaves a truncated mask that a later run would skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(np.asarray(values, dtype=np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_val_if_missing(splits_dir: Path, samples: list[Sample], what: str) -> str:
    """Write `<splits_dir>/val.txt` unless it exists; one line saying what happened."""
    val_file = Path(splits_dir) / "val.txt"
    if val_file.is_file():
        return f"kept {val_file}"
    if not samples:
        raise SplitError(f"no {what} found to list in {val_file}")
    write_list(val_file, samples)
    return f"wrote {val_file} ({len(samples)} {what})"
