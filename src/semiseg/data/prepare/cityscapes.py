"""Cityscapes: write `*_gtFine_labelTrainIds.png` (19 classes, 255 ignored) from the raw
`*_gtFine_labelIds.png` with the official id -> trainId table, and `splits/val.txt` if missing.

    python -m semiseg.data.prepare.cityscapes ROOT [--overwrite]

ROOT holds `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` and
`gtFine/{train,val}/<city>/*_gtFine_labelIds.png` (the official gtFine_trainvaltest package).
Existing trainId files are kept unless --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data.masks import label_map_table
from semiseg.data.prepare.common import save_png, write_val_if_missing
from semiseg.data.splits import Sample, SplitError
from semiseg.errors import exit_on_user_error

LABEL_IDS = "_gtFine_labelIds.png"
TRAIN_IDS = "_gtFine_labelTrainIds.png"
LAYOUT = (
    "<root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
    "<root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png"
)


def convert(root: Path, overwrite: bool = False) -> tuple[int, int]:
    """Convert every labelIds file under root/gtFine; returns (written, kept)."""
    root = Path(root)
    gt = root / "gtFine"
    if not gt.is_dir():
        raise SplitError(f"{gt} does not exist; expected layout: {LAYOUT}")
    sources = sorted(gt.rglob(f"*{LABEL_IDS}"))
    if not sources:
        raise SplitError(f"no *{LABEL_IDS} under {gt}; expected layout: {LAYOUT}")
    table = label_map_table("cityscapes_ids")
    written = kept = 0
    for source in sources:
        target = source.with_name(source.name[: -len(LABEL_IDS)] + TRAIN_IDS)
        if target.is_file() and not overwrite:
            kept += 1
            continue
        try:
            with Image.open(source) as img:
                ids = np.asarray(img)
        except OSError as e:
            raise SplitError(f"cannot read {source}: {e}") from None
        if ids.ndim != 2 or ids.min() < 0 or ids.max() > 255:
            raise SplitError(f"{source} is not a single-channel labelIds mask (values 0..33)")
        save_png(target, table[ids.astype(np.uint8)])
        written += 1
    return written, kept


def val_samples(root: Path) -> list[Sample]:
    samples = []
    for image in sorted((Path(root) / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        rel = image.relative_to(root)
        city, stem = rel.parent.name, image.name[: -len("_leftImg8bit.png")]
        mask = Path("gtFine") / "val" / city / f"{stem}{TRAIN_IDS}"
        if (root / mask).is_file():
            samples.append(Sample(rel.as_posix(), mask.as_posix()))
    return samples


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg.data.prepare.cityscapes",
        description="labelIds -> labelTrainIds (19 classes, 255 ignore), and splits/val.txt.",
    )
    parser.add_argument("root", type=Path, help="the folder holding leftImg8bit/ and gtFine/")
    parser.add_argument("--splits-dir", type=Path, help="default: ROOT/splits")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing trainId files")
    args = parser.parse_args(argv)
    written, kept = convert(args.root, args.overwrite)
    val = write_val_if_missing(
        args.splits_dir or args.root / "splits", val_samples(args.root), "val images"
    )
    print(f"cityscapes: wrote {written} *{TRAIN_IDS} files, kept {kept} existing; {val}")


if __name__ == "__main__":
    main()
