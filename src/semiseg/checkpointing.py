"""Checkpoint writing that never leaves a truncated file behind."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write the checkpoint next to its target, then rename it into place.

    A run killed while saving keeps the previous last.ckpt/best.ckpt intact.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
