"""Split files: one `<image> <mask>` line per sample, paths relative to the dataset root.

Layout: `<splits_dir>/<split>/labeled.txt`, `<splits_dir>/<split>/unlabeled.txt` (optional,
masks optional) and `<splits_dir>/val.txt`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
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


_FRACTION = re.compile(r"(\d+)\s*[/_]\s*(\d+)")


def fraction_key(name) -> str | None:
    """'1/16' (or the folder spelling '1_16') -> '1/16' for a fraction in (0, 1); else None."""
    match = _FRACTION.fullmatch(split_name(name))
    if not match:
        return None
    num, den = int(match[1]), int(match[2])
    return f"{num}/{den}" if 0 < num < den else None


@dataclass(frozen=True)
class Split:
    """A split as the user names it (`split=1/16`, `662`, `1_16`, `mine`), parsed once: the
    labeled count it stands for (None when it is not a count or a known fraction) and the folder
    names it may have under splits_dir, in the order they are tried; `folder` once found.

    With aliases {"1/16": 662}: "1/16", "1_16" and "662" all name the split of 662 images,
    stored as `662/` or, as in the public UniMatch tree, `1_16/`.
    """

    name: str
    count: int | None
    candidates: tuple[str, ...]
    folder: Path | None = None

    @classmethod
    def parse(cls, split, aliases: Mapping | None = None) -> Split:
        name = split_name(split)
        table = {fraction_key(k) or split_name(k): int(v) for k, v in (aliases or {}).items()}
        count = int(name) if name.isdigit() else table.get(fraction_key(name) or name)
        names = [name]
        if count is not None:
            names.append(str(count))
            names += [key.replace("/", "_") for key, value in table.items() if value == count]
        candidates = tuple(dict.fromkeys(n for n in names if "/" not in n))
        return cls(name, count, candidates)

    def find(self, splits_dir: Path) -> Split | None:
        """This split with the folder holding its labeled.txt, or None."""
        for candidate in self.candidates:
            folder = Path(splits_dir) / candidate
            if (folder / "labeled.txt").is_file():
                return replace(self, folder=folder)
        return None


def find_split(splits_dir: Path, split, aliases: Mapping | None = None) -> Path | None:
    """The folder holding the split's labeled.txt, or None."""
    found = Split.parse(split, aliases).find(splits_dir)
    return found.folder if found else None


def hydra_underscore_hint(split, aliases: Mapping | None) -> str:
    """Hydra parses `split=1_16` as the int 116: say so when that is what happened."""
    name = split_name(split)
    if name.isdigit():
        for key in aliases or {}:
            fraction = fraction_key(key)
            if fraction and fraction.replace("/", "") == name:
                typed = fraction.replace("/", "_")
                return f" (Hydra reads split={typed} as {name}: write split={fraction})"
    return ""


def resolve_split(splits_dir: Path, split) -> Path:
    """The folder of a split named as its folder (no aliases: the dataset-less loaders)."""
    splits_dir = Path(splits_dir)
    name = split_name(split)
    if not splits_dir.is_dir():
        raise SplitError(f"splits folder {splits_dir} does not exist; expected layout: {LAYOUT}")
    found = Split.parse(name).find(splits_dir)
    if found is None:
        valid = available_splits(splits_dir)
        if not valid:
            raise SplitError(
                f"no splits in {splits_dir} (no <split>/labeled.txt); expected layout: {LAYOUT}"
            )
        raise SplitError(
            f"unknown split '{name}' in {splits_dir}: valid splits are {', '.join(valid)}"
        )
    return found.folder


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

    def apply_mask_fallback(self, fallback: Mapping | None, root: Path | None = None) -> int:
        """Where a listed mask is missing, use the same file under the fallback folder, e.g.
        {SegmentationClass: SegmentationClassAug} for the SBD-augmented Pascal masks. Returns
        how many masks were redirected."""
        if not fallback:
            return 0
        root = Path(root if root is not None else self.root)
        moved = 0

        def redirect(samples):
            nonlocal moved
            out = []
            for sample in samples:
                mask = sample.mask
                if mask is not None and not (root / mask).is_file():
                    head, _, tail = mask.partition("/")
                    if head in fallback and tail and (root / fallback[head] / tail).is_file():
                        mask = f"{fallback[head]}/{tail}"
                        moved += 1
                out.append(Sample(sample.image, mask))
            return out

        self.labeled = redirect(self.labeled)
        self.unlabeled = redirect(self.unlabeled)
        self.val = redirect(self.val)
        return moved

    def check_exists(self, root: Path | None = None, hint: str | None = None) -> None:
        """Fail before training starts rather than in a worker halfway through an epoch."""
        root = Path(root if root is not None else self.root)
        missing = self.missing(root)
        if missing:
            shown = ", ".join(missing[:3])
            raise SplitError(
                f"{len(missing)} files listed in the splits are missing under {root} "
                f"(first: {shown}); check the dataset root or regenerate the split files"
                + (f"; {hint}" if hint else "")
            )


def load_split(root: Path, splits_dir: Path, split) -> SplitFiles:
    folder = resolve_split(splits_dir, split)
    return load_split_folder(root, folder, Path(splits_dir) / "val.txt")


def load_split_folder(root: Path, folder: Path, val_file: Path) -> SplitFiles:
    """labeled.txt and (optional) unlabeled.txt of one split folder, and the val list."""
    folder = Path(folder)
    labeled = read_list(folder / "labeled.txt", require_mask=True)
    if not labeled:
        raise SplitError(f"{folder / 'labeled.txt'} lists no images; add '<image> <mask>' lines")
    unlabeled_file = folder / "unlabeled.txt"
    unlabeled = read_list(unlabeled_file, require_mask=False) if unlabeled_file.is_file() else []
    val = read_list(val_file, require_mask=True)
    if not val:
        raise SplitError(f"{val_file} lists no images; add '<image> <mask>' lines")
    return SplitFiles(labeled, unlabeled, val, Path(root))
