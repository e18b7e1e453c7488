"""Split files: one `<image> <mask>` line per sample, paths relative to the dataset root.

Layout: `<splits_dir>/<split>/labeled.txt`, `<splits_dir>/<split>/unlabeled.txt` (optional,
masks optional) and `<splits_dir>/val.txt`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

LAYOUT = (
    "<splits_dir>/<split>/labeled.txt, <splits_dir>/<split>/unlabeled.txt and <splits_dir>/val.txt"
)


class SplitError(ValueError):
    """Bad split file, split name or data file; the message says what is wrong and how to fix it."""


class Sample(NamedTuple):
    image: str
    mask: str | None


def read_list(list_file: Path, require_mask: bool) -> list[Sample]:
    list_file = Path(list_file)
    if not list_file.is_file():
        raise SplitError(f"split list {list_file} not found; expected layout: {LAYOUT}")
    samples = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_file} line {number}"
        if len(fields) > 2:
            raise SplitError(
                f"{where}: expected '<image> <mask>' but found {len(fields)} fields "
                f"({line.strip()!r}); paths must not contain spaces"
            )
        if len(fields) == 1 and require_mask:
            raise SplitError(
                f"{where}: image {fields[0]!r} has no mask; labeled and val lists need "
                "'<image> <mask>' on every line (put mask-less images in unlabeled.txt)"
            )
        samples.append(Sample(fields[0], fields[1] if len(fields) == 2 else None))
    return samples


def write_list(path: Path, samples: Iterable[Sample | tuple]) -> None:
    """Write a list file atomically, so a reader never sees half a file."""
    path = Path(path)
    lines = []
    for image, mask in samples:
        fields = [image] if mask is None else [image, mask]
        if any(not f or len(f.split()) != 1 for f in fields):
            raise SplitError(f"cannot write {path}: path {fields!r} is empty or contains spaces")
        lines.append(" ".join(fields) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_split(
    splits_dir: Path, split, labeled: Iterable[Sample], unlabeled: Iterable[Sample]
) -> Path:
    folder = Path(splits_dir) / split_name(split)
    write_list(folder / "labeled.txt", labeled)
    write_list(folder / "unlabeled.txt", unlabeled)
    return folder


def _split_key(name: str):
    # numeric names (92, 183, 1464) sort by value, others (1_16) after them alphabetically
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def available_splits(splits_dir: Path) -> list[str]:
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        return []
    names = [p.name for p in splits_dir.iterdir() if (p / "labeled.txt").is_file()]
    return sorted(names, key=_split_key)


def split_name(split) -> str:
    # Hydra turns `split=1464` into an int; folder names are strings
    return str(split).strip()


def resolve_split(splits_dir: Path, split) -> Path:
    splits_dir = Path(splits_dir)
    name = split_name(split)
    if not splits_dir.is_dir():
        raise SplitError(f"splits folder {splits_dir} does not exist; expected layout: {LAYOUT}")
    folder = splits_dir / name
    if not (folder / "labeled.txt").is_file():
        valid = available_splits(splits_dir)
        if not valid:
            raise SplitError(
                f"no splits in {splits_dir} (no <split>/labeled.txt); expected layout: {LAYOUT}"
            )
        raise SplitError(
            f"unknown split '{name}' in {splits_dir}: valid splits are {', '.join(valid)}"
        )
    return folder


@dataclass
class SplitFiles:
    labeled: list[Sample]
    unlabeled: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    root: Path | None = None

    def missing(self, root: Path | None = None) -> list[str]:
        root = Path(root if root is not None else self.root)
        seen, missing = set(), []
        for sample in (*self.labeled, *self.unlabeled, *self.val):
            for rel in sample:
                if rel is not None and rel not in seen:
                    seen.add(rel)
                    if not (root / rel).is_file():
                        missing.append(rel)
        return missing

    def check_exists(self, root: Path | None = None) -> None:
        """Fail before training starts rather than in a worker halfway through an epoch."""
        root = Path(root if root is not None else self.root)
        missing = self.missing(root)
        if missing:
            shown = ", ".join(missing[:3])
            raise SplitError(
                f"{len(missing)} files listed in the splits are missing under {root} "
                f"(first: {shown}); check the dataset root or regenerate the split files"
            )


def load_split(root: Path, splits_dir: Path, split) -> SplitFiles:
    folder = resolve_split(splits_dir, split)
    labeled = read_list(folder / "labeled.txt", require_mask=True)
    if not labeled:
        raise SplitError(f"{folder / 'labeled.txt'} lists no images; add '<image> <mask>' lines")
    unlabeled_file = folder / "unlabeled.txt"
    unlabeled = read_list(unlabeled_file, require_mask=False) if unlabeled_file.is_file() else []
    val_file = Path(splits_dir) / "val.txt"
    val = read_list(val_file, require_mask=True)
    if not val:
        raise SplitError(f"{val_file} lists no images; add '<image> <mask>' lines")
    return SplitFiles(labeled, unlabeled, val, Path(root))
