"""What a `conf/dataset/*.yaml` says about a dataset on disk, and the checks that run before
training so that bad input fails with one line that names the file.

Only `root` and `splits_dir` are required; every other key has a default, so a dataset config
written for an older version keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from semiseg.data.checks import drop_missing_unlabeled_masks, note_once
from semiseg.data.image_files import displayed_size, too_large
from semiseg.data.masks import IGNORE, MaskReader
from semiseg.data.splits import (
    LAYOUT,
    Sample,
    Split,
    SplitError,
    SplitFiles,
    available_splits,
    fraction_key,
    hydra_underscore_hint,
    load_split_folder,
    read_list,
    split_name,
)


def load_class_names(classes: list[str] | None, classes_file: str | None) -> list[str]:
    """Class names from the config list, else from a file with one name per line."""
    if classes:
        return [str(c) for c in classes]
    if not classes_file:
        raise SplitError("dataset.classes and dataset.classes_file are both empty: set one")
    path = Path(classes_file)
    if not path.is_file():
        raise SplitError(
            f"dataset.classes_file {path} does not exist: give a text file with one class "
            "name per line (the line count is the number of classes)"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise SplitError(f"{path} names {len(names)} class(es): a segmentation task needs >= 2")
    return names


@dataclass
class DatasetSpec:
    root: Path
    splits_dir: Path
    name: str = "dataset"
    classes: list[str] | None = None
    classes_file: str | None = None
    palette: Any = None
    label_map: Any = None
    mask_fallback: dict[str, str] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    split_aliases: dict[str, int] = field(default_factory=dict)
    generate_splits: bool = False
    split_seed: int = 0
    val_fraction: float = 0.1
    image_dir: str = "images"
    mask_dir: str = "masks"
    check_masks: int = 200
    check_images: int = 5000
    layout: str | None = None
    prepare: str | None = None
    mask_channel: int | None = None  # colour masks: the channel holding the class (SYNTHIA: 0)
    key: str = "dataset"  # the config key the messages name (`source` for a source dataset)

    @classmethod
    def from_config(cls, config: Mapping | DictConfig | None, **given) -> DatasetSpec:
        """From a dataset config (unknown keys are ignored); keyword arguments win."""
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known and v is not None}
        values.update({k: v for k, v in given.items() if v is not None})
        if "root" not in values or "splits_dir" not in values:
            raise SplitError("the dataset config needs root and splits_dir")
        values["root"], values["splits_dir"] = Path(values["root"]), Path(values["splits_dir"])
        values["splits"] = [split_name(s) for s in values.get("splits") or []]
        values["split_aliases"] = dict(values.get("split_aliases") or {})
        values["mask_fallback"] = dict(values.get("mask_fallback") or {})
        return cls(**values)

    @property
    def has_classes(self) -> bool:
        return bool(self.classes) or bool(self.classes_file)

    def class_names(self) -> list[str]:
        return load_class_names(self.classes, self.classes_file)

    def mask_reader(self, num_classes: int | None, check: bool = True) -> MaskReader:
        return MaskReader(
            num_classes, self.label_map, self.palette, check=check, channel=self.mask_channel
        )

    # -- before anything is read ---------------------------------------------------------------

    def check_root(self) -> None:
        if not self.root.is_dir():
            layout = self.layout or f"<root>/... and {LAYOUT}"
            raise SplitError(
                f"{self.key}.root {self.root} does not exist: point it at the {self._what} "
                f"({self.key}.root=DIR); expected layout: {layout}"
            )

    @property
    def _what(self) -> str:
        return "dataset" if self.key == "dataset" else f"{self.name} dataset"

    def valid_splits(self) -> list[str]:
        """The paper splits named in the config, then any other folder under splits_dir."""
        on_disk = available_splits(self.splits_dir)
        covered = set()
        for name in self.splits:
            covered.update(Split.parse(name, self.split_aliases).candidates)
        return [*self.splits, *(n for n in on_disk if n not in covered)]

    def resolve_split(self, split) -> tuple[Split, str | None]:
        """The split with its folder, and a line to print when it had to be generated.

        Accepts a folder name, a labeled count, or a fraction alias (`1/16`); for datasets with
        `generate_splits` a missing count or fraction is generated (seed `split_seed`).
        """
        parsed = Split.parse(split, self.split_aliases)
        found = parsed.find(self.splits_dir)
        if found is not None:
            return found, None
        if self.generate_splits and (parsed.count is not None or fraction_key(parsed.name)):
            folder, note = self._generate(parsed.name)
            return replace(parsed, folder=folder), note
        raise SplitError(self._unknown_split_message(parsed.name))

    def _generate(self, name: str) -> tuple[Path, str | None]:
        from semiseg.data.prepare.splits import generate

        generated = generate(
            self.root,
            self.splits_dir,
            name,
            seed=self.split_seed,
            aliases=self.split_aliases,
            image_dir=self.image_dir,
            mask_dir=self.mask_dir,
            val_fraction=self.val_fraction,
            reuse=True,
        )
        if not generated.created:  # a fraction that comes to a count generated before
            return generated.folder, None
        return generated.folder, f"split {name}: generated {generated.summary()}"

    def _unknown_split_message(self, name: str) -> str:
        parsed = Split.parse(name, self.split_aliases)
        count, folders = parsed.count, parsed.candidates
        known = count is not None and (
            str(count) in self.splits or str(count) in map(str, self.split_aliases.values())
        )
        if known:
            looked = " or ".join(f"{f}/labeled.txt" for f in folders)
            return (
                f"split {name} of {self.name} is not in {self.splits_dir} (looked for {looked}): "
                f"copy the public UniMatch splits/{self.name}/ folder there or set "
                "dataset.splits_dir"
            )
        if not self.splits_dir.is_dir() and not self.splits:
            return f"splits folder {self.splits_dir} does not exist; expected layout: {LAYOUT}"
        valid = self.valid_splits()
        aliases = ", ".join(f"{k}={v}" for k, v in self.split_aliases.items())
        return (
            f"unknown split '{name}' for {self.name}: valid splits are "
            f"{', '.join(valid) if valid else '(none found in ' + str(self.splits_dir) + ')'}"
            + (f" (aliases {aliases})" if aliases else "")
            + hydra_underscore_hint(name, self.split_aliases)
            + (
                "; a count or fraction (e.g. 100 or 1/8) is generated"
                if self.generate_splits
                else ""
            )
        )

    # -- the files -----------------------------------------------------------------------------

    def load_files(self, folder: Path) -> SplitFiles:
        files = load_split_folder(self.root, folder, self.splits_dir / "val.txt")
        self.check_files(files)
        return files

    def load_val(self) -> SplitFiles:
        val_file = self.splits_dir / "val.txt"
        if not val_file.is_file():
            raise SplitError(
                f"validation list {val_file} not found; expected layout: {self.layout or LAYOUT}"
            )
        files = SplitFiles(labeled=[], val=read_list(val_file, require_mask=True), root=self.root)
        if not files.val:
            raise SplitError(f"{val_file} lists no images; add '<image> <mask>' lines")
        self.check_files(files)
        return files

    def load_source(self) -> SplitFiles:
        """Every training image of a source dataset (domain adaptation: `source=gta5`), as the
        labeled list: the images of its splits (the union of every split's labeled and unlabeled
        lists) when `splits_dir` holds any, else every image under `image_dir` with a mask of the
        same name (.png) under `mask_dir`. Images without a mask are left out."""
        from semiseg.data.prepare.splits import pool_from_splits, scan_pairs

        if available_splits(self.splits_dir):
            pool = pool_from_splits(self.splits_dir)
            where = f"the splits in {self.splits_dir}"
        else:
            for folder in (self.image_dir, self.mask_dir):
                if not (self.root / folder).is_dir():
                    raise SplitError(
                        f"{self.key}.root {self.root} has no {folder}/ folder: {self.key}="
                        f"{self.name} reads {self.layout or self.image_dir + '/ and ' + self.mask_dir + '/'}; "
                        f"set {self.key}.root=DIR (or {self.key}.image_dir / {self.key}.mask_dir)"
                    )
            pool = scan_pairs(self.root, self.image_dir, self.mask_dir)
            where = f"{self.root / self.image_dir}"
        labeled = [s for s in pool if s.mask is not None]
        if not labeled:
            raise SplitError(
                f"{self.key}={self.name}: none of the {len(pool)} images of {where} has a mask; "
                "a source dataset gives the labeled images"
            )
        if len(labeled) < len(pool):
            unlabeled = [s.image for s in pool if s.mask is None]
            note_once(
                f"note: {len(unlabeled)} images of {where} have no mask and are left out of the "
                f"labeled source images (e.g. {', '.join(unlabeled[:3])})"
            )
        files = SplitFiles(labeled=labeled, root=self.root)
        self.check_files(files)
        return files

    def check_files(self, files: SplitFiles) -> None:
        files.apply_mask_fallback(self.mask_fallback, self.root)
        dropped = drop_missing_unlabeled_masks(files, self.root)
        if dropped:
            note_once(dropped)
        hint = f"if the masks were never built, run: {self.prepare}" if self.prepare else None
        files.check_exists(self.root, hint=hint)

    def verify_masks(
        self, samples: list[Sample], reader: MaskReader, warn_0_255: bool = False
    ) -> None:
        """Read up to `check_masks` masks (spread over the list): values and sizes. Every
        mask is checked again when a dataset item loads it, so this only makes most errors
        come before training instead of during it. `warn_0_255`: say so when every mask read
        holds only 0 and 255 without a label_map (binary masks stored as 0/255: every object
        pixel would be ignored)."""
        limit = len(samples) if self.check_masks < 0 else min(self.check_masks, len(samples))
        if limit <= 0:
            return
        step = len(samples) / limit
        seen: set[int] = set()
        for k in range(limit):
            sample = samples[int(k * step)]
            if sample.mask is None:
                continue
            values = reader.values(self.root / sample.mask)
            if warn_0_255 and len(seen) < 3:
                seen.update(int(v) for v in np.unique(values))
            check_same_size(self.root, sample, (values.shape[1], values.shape[0]))
        if warn_0_255 and self.label_map is None and seen == {0, IGNORE}:
            note_once(
                f"warning: the {self.name} masks checked hold only 0 and 255, and 255 is ignored: "
                "no pixel is labeled with a class other than 0. Binary masks stored as 0/255 "
                "need dataset.label_map={255:1}"
            )


def check_same_size(root: Path, sample: Sample, mask_size: tuple[int, int]) -> None:
    """The image's size as displayed (its EXIF orientation), from its header only."""
    try:
        with Image.open(root / sample.image) as img:
            size = displayed_size(img)
    except Image.DecompressionBombError as e:
        raise too_large(root / sample.image, "image", e) from None
    except OSError as e:
        raise SplitError(f"cannot read image {root / sample.image}: {e}") from None
    if size != mask_size:
        raise SplitError(
            f"image {root / sample.image} is {size[0]}x{size[1]} but its mask "
            f"{root / sample.mask} is {mask_size[0]}x{mask_size[1]}; they must have the same size"
        )
