"""Resuming a run: which checkpoint `resume=` names, and whether it is this run's.

`resume_checkpoint` turns `resume=auto|PATH` into the checkpoint to continue from;
`config_mismatch` lists the identity keys (IDENTITY_KEYS) a resumed run would change.
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


# Keys of the run config that make a run what it is: resuming with other values would continue
# another experiment under this one's name.
IDENTITY_KEYS = ("method", "model", "dataset.name", "split", "seed")


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """The identity keys (dotted, down to the leaves) whose values differ, as `key=saved/now`."""
    differences: list[str] = []
    for key in IDENTITY_KEYS:
        _compare(key, _lookup(saved, key), _lookup(current, key), differences)
    return differences


def _lookup(cfg: dict, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _compare(key: str, saved, current, out: list[str]) -> None:
    if key in ("model.pretrained", "model.pretrained_dir"):
        return  # only the initial weights: the checkpoint replaces them
    if isinstance(saved, dict) and isinstance(current, dict):
        for sub in sorted(saved.keys() | current.keys(), key=str):
            _compare(f"{key}.{sub}", saved.get(sub), current.get(sub), out)
    elif str(saved) != str(current):
        out.append(f"{key}={saved} there, {current} here")
