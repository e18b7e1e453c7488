"""Resuming a run: which checkpoint `resume=` names, and whether it is this run's.

`resume_checkpoint` turns `resume=auto|PATH` into the checkpoint to continue from;
`config_mismatch` lists the keys of the run config a resumed run would change (all but
MAY_CHANGE: a longer schedule, paths, workers, devices, logging).
"""

from __future__ import annotations

from pathlib import Path

from semiseg.checkpoints.io import LAST
from semiseg.errors import ConfigError


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


# Keys a resumed run may change: a longer schedule, where the data and logs live, how many
# processes run it, the initial weights (the checkpoint replaces them). Every other key of the
# resolved training config (method, model, optimiser, data, evaluation, seed, ...) must match.
MAY_CHANGE = (
    "resume",
    "logger",
    "hydra",
    "reference",
    "optimized_metric",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every",
    "data.num_workers",
    "model.pretrained",
    "model.pretrained_dir",
)
MAY_MOVE = ("root", "splits_dir")  # a dataset's folders, wherever they appear


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """The keys of the resolved config (dotted, down to the leaves) whose values differ, as
    `key=saved there, now here`, except those a resumed run may change (MAY_CHANGE)."""
    differences: list[str] = []
    for key in sorted(saved.keys() | current.keys(), key=str):
        _compare(str(key), saved.get(key), current.get(key), differences)
    return differences


def _may_change(key: str) -> bool:
    if key.rsplit(".", 1)[-1] in MAY_MOVE:
        return True
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def _compare(key: str, saved, current, out: list[str]) -> None:
    if _may_change(key):
        return
    if isinstance(saved, dict) and isinstance(current, dict):
        for sub in sorted(saved.keys() | current.keys(), key=str):
            _compare(f"{key}.{sub}", saved.get(sub), current.get(sub), out)
    elif str(saved) != str(current):
        out.append(f"{key}={saved} there, {current} here")
