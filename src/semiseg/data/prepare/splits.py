"""Generate a split: `<splits_dir>/<count>/labeled.txt` and `unlabeled.txt` (and `val.txt` when
there is none), in the format of the public split files.

    python -m semiseg.data.prepare.splits ROOT --count 100 [--seed 0]
    python -m semiseg.data.prepare.splits ROOT --fraction 1/8 [--seed 0] [--val-fraction 0.1]

The pool of training images is the union of the existing splits' labeled and unlabeled lists,
or, when `splits_dir` has no split yet, every image under `ROOT/images/` paired by name with
`ROOT/masks/<name>.png` (images without a mask can only be unlabeled). A fraction becomes
ceil(fraction x pool size) labeled images. Labeled images are a prefix of one seeded shuffle of
the images with masks, so for one seed smaller splits are nested in larger ones. Labeled,
unlabeled and val never share an image: val comes from `val.txt` when it exists, otherwise a
seeded `--val-fraction` of the images with masks is held out and written to `val.txt`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from semiseg.data.splits import (
    Sample,
    Split,
    SplitError,
    available_splits,
    fraction_key,
    read_list,
    split_name,
    write_list,
    write_split,
)
from semiseg.errors import exit_on_user_error

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Generated:
    folder: Path
    labeled: list[Sample]
    unlabeled: list[Sample]
    val: list[Sample]
    val_written: bool
    seed: int
    created: bool = True

    def summary(self) -> str:
        val = f"val.txt: {len(self.val)} images" + (" (held out, new)" if self.val_written else "")
        return (
            f"{len(self.labeled)} labeled + {len(self.unlabeled)} unlabeled images (seed "
            f"{self.seed}) in {self.folder}; {val}"
        )


def scan_pairs(root: Path, image_dir: str = "images", mask_dir: str = "masks") -> list[Sample]:
    """Every image under root/image_dir, with root/mask_dir/<same relative name>.png if any."""
    root = Path(root)
    images = root / image_dir
    if not images.is_dir():
        raise SplitError(
            f"{images} does not exist: a dataset without split files needs "
            f"<root>/{image_dir}/ and <root>/{mask_dir}/ (masks: same names, .png)"
        )
    samples = []
    for path in sorted(images.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(images)
        mask = Path(mask_dir) / rel.with_suffix(".png")
        image = (Path(image_dir) / rel).as_posix()
        if " " in image:
            raise SplitError(f"{root / image}: file names must not contain spaces")
        samples.append(Sample(image, mask.as_posix() if (root / mask).is_file() else None))
    if not samples:
        raise SplitError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images}")
    if not any(s.mask for s in samples):
        raise SplitError(
            f"none of the {len(samples)} images under {images} has a mask in {root / mask_dir} "
            "(expected the same relative name with .png)"
        )
    return samples


def pool_from_splits(splits_dir: Path) -> list[Sample]:
    """The union of every split's labeled and unlabeled lists (one line per image)."""
    by_image: dict[str, Sample] = {}
    for name in available_splits(splits_dir):
        folder = Path(splits_dir) / name
        lists = [read_list(folder / "labeled.txt", require_mask=True)]
        if (folder / "unlabeled.txt").is_file():
            lists.append(read_list(folder / "unlabeled.txt", require_mask=False))
        for sample in (s for samples in lists for s in samples):
            if by_image.get(sample.image, Sample("", None)).mask is None:
                by_image[sample.image] = sample
    return [by_image[k] for k in sorted(by_image)]


def requested_count(split, pool_size: int, aliases: Mapping | None = None) -> int:
    """A labeled count from a split name: a count, a known alias, or a fraction of the pool."""
    count = Split.parse(split, aliases).count
    if count is not None:
        return count
    fraction = fraction_key(split)
    if fraction is None:
        raise SplitError(
            f"cannot generate split '{split_name(split)}': give a labeled-image count (e.g. 100) "
            "or a fraction (e.g. 1/8)"
        )
    return math.ceil(Fraction(fraction) * pool_size)


def _held_out_val(pool: list[Sample], fraction: float, seed: int) -> list[Sample]:
    masked = [s for s in pool if s.mask is not None]
    if not 0 < fraction < 1:
        raise SplitError(f"val_fraction must be in (0, 1), not {fraction}")
    n_val = max(1, round(fraction * len(masked)))
    if n_val >= len(masked):
        raise SplitError(
            f"only {len(masked)} images have masks: too few to hold out {n_val} for validation "
            "and still label one; add masks or write val.txt yourself"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(masked))
    return sorted((masked[i] for i in order[:n_val]), key=lambda s: s.image)


def partition(pool: list[Sample], count: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """`count` labeled images drawn from those with masks (a prefix of one seeded shuffle, so
    splits of one seed are nested); every other pool image is unlabeled."""
    masked = sorted((s for s in pool if s.mask is not None), key=lambda s: s.image)
    if not 1 <= count <= len(masked):
        raise SplitError(
            f"cannot label {count} images: the pool has {len(masked)} images with masks "
            f"(and {len(pool) - len(masked)} without)"
        )
    order = np.random.default_rng([seed, 1]).permutation(len(masked))
    chosen = {masked[i].image for i in order[:count]}
    labeled = [s for s in masked if s.image in chosen]
    unlabeled = sorted((s for s in pool if s.image not in chosen), key=lambda s: s.image)
    return labeled, unlabeled


def generate(
    root: Path,
    splits_dir: Path,
    split,
    seed: int = 0,
    aliases: Mapping | None = None,
    image_dir: str = "images",
    mask_dir: str = "masks",
    val_fraction: float = 0.1,
    overwrite: bool = False,
    reuse: bool = False,
) -> Generated:
    """Write the split (named by its labeled count) and, if missing, val.txt.

    When the split already exists: replace it if `overwrite`, return it unchanged (`created`
    False) if `reuse` (a fraction that comes to an existing count), else fail."""
    root, splits_dir = Path(root), Path(splits_dir)
    if not root.is_dir():
        raise SplitError(f"dataset root {root} does not exist")
    val_file = splits_dir / "val.txt"
    pool = pool_from_splits(splits_dir) if available_splits(splits_dir) else []
    if not pool:
        pool = scan_pairs(root, image_dir, mask_dir)
    val_written = not val_file.is_file()
    val = read_list(val_file, require_mask=True) if not val_written else []
    if val_written:
        val = _held_out_val(pool, val_fraction, seed)
    val_images = {s.image for s in val}
    pool = [s for s in pool if s.image not in val_images]

    count = requested_count(split, len(pool), aliases)
    folder = splits_dir / str(count)
    if (folder / "labeled.txt").is_file() and not overwrite:
        if reuse:
            return Generated(folder, [], [], val, False, seed, created=False)
        raise SplitError(f"split {folder} already exists; pass --force to replace it")
    labeled, unlabeled = partition(pool, count, seed)
    try:
        if val_written:
            write_list(val_file, val)
        write_split(splits_dir, count, labeled, unlabeled)
    except OSError as e:  # a read-only dataset folder, typically a shared one
        raise SplitError(
            f"cannot write the split files into {splits_dir} ({e.strerror or e}): set "
            "dataset.splits_dir (or --splits-dir) to a writable folder; the images are still "
            "read from the dataset root"
        ) from None
    return Generated(folder, labeled, unlabeled, val, val_written, seed)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg.data.prepare.splits",
        description="Write a labeled/unlabeled split (and val.txt if missing) by count or fraction.",
    )
    parser.add_argument("root", type=Path, help="dataset root; list paths are relative to it")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--count", type=int, help="number of labeled images")
    size.add_argument("--fraction", help="labeled share of the pool, e.g. 1/8 (rounded up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits-dir", type=Path, help="default: ROOT/splits")
    parser.add_argument("--images", default="images", help="image folder (no split files yet)")
    parser.add_argument("--masks", default="masks", help="mask folder (no split files yet)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out if no val.txt")
    parser.add_argument("--force", action="store_true", help="replace an existing split")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> Generated:
    args = parse_args(argv)
    split = args.count if args.count is not None else args.fraction
    if args.fraction is not None and fraction_key(args.fraction) is None:
        raise SplitError(f"--fraction {args.fraction!r} is not a fraction like 1/8")
    generated = generate(
        args.root,
        args.splits_dir or args.root / "splits",
        split,
        seed=args.seed,
        image_dir=args.images,
        mask_dir=args.masks,
        val_fraction=args.val_fraction,
        overwrite=args.force,
    )
    print(f"wrote split {generated.folder.name}: {generated.summary()}")
    return generated


if __name__ == "__main__":
    main()
