"""COCO 2017: write `masks/<image id>.png` from the instance annotations, as in UniMatch: 81 classes,
0 = background, the 80 categories in increasing category-id order as 1..80, and
`splits/val.txt` (val2017) if missing.

    python -m semiseg.data.prepare.coco ROOT [--sets train2017 val2017] [--workers 4]

ROOT holds `train2017/`, `val2017/` and `annotations/instances_{train2017,val2017}.json`.
Needs pycocotools (`pip install 'semiseg[coco]'`).

Overlaps: instances are painted in the order of the annotation file, so where two overlap the
later one wins; crowd regions (`iscrowd: 1`) become 255 (ignored) where no single instance
covers them. Existing masks are kept unless --overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
from pathlib import Path

import numpy as np

from semiseg.data.prepare.common import save_png, write_val_if_missing
from semiseg.data.splits import Sample, SplitError
from semiseg.errors import ConfigError, exit_on_user_error

NUM_CATEGORIES = 80
IGNORE = 255
_STATE: dict = {}  # the loaded annotations, shared with forked workers


def _load(annotation_file: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ConfigError(
            "building COCO masks needs pycocotools: pip install 'semiseg[coco]'"
        ) from None
    if not annotation_file.is_file():
        raise SplitError(
            f"{annotation_file} not found; expected <root>/annotations/instances_<set>.json "
            "(COCO 2017 annotations)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotation_file))
    except (ValueError, KeyError, OSError) as e:
        raise SplitError(f"cannot read {annotation_file}: {e}") from None
    ids = sorted(coco.getCatIds())
    if len(ids) != NUM_CATEGORIES:
        raise SplitError(
            f"{annotation_file} has {len(ids)} categories, not the {NUM_CATEGORIES} of COCO "
            "instances: masks would not match the 81 classes of dataset=coco"
        )
    return coco, {cat: index for index, cat in enumerate(ids, start=1)}


def instance_mask(coco, classes: dict[int, int], image_id: int) -> np.ndarray:
    """One image's class-index mask: instances in file order (later wins), crowd -> 255."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
    crowd = np.zeros_like(mask, dtype=bool)
    for ann in coco.imgToAnns.get(image_id, []):
        pixels = coco.annToMask(ann).astype(bool)
        if ann.get("iscrowd", 0):
            crowd |= pixels
        else:
            mask[pixels] = classes[ann["category_id"]]
    mask[crowd & (mask == 0)] = IGNORE
    return mask


def _write_one(image_id: int) -> bool:
    coco, classes, masks_dir, overwrite = (
        _STATE["coco"],
        _STATE["classes"],
        _STATE["masks_dir"],
        _STATE["overwrite"],
    )
    target = masks_dir / (Path(coco.imgs[image_id]["file_name"]).stem + ".png")
    if target.is_file() and not overwrite:
        return False
    save_png(target, instance_mask(coco, classes, image_id))
    return True


def build_masks(
    root: Path, image_set: str, overwrite: bool = False, workers: int = 1, annotations=None
) -> tuple[int, int, list[Sample]]:
    """Masks for every image of one set; returns (written, kept, samples of that set)."""
    root = Path(root)
    annotations = Path(annotations) if annotations else root / "annotations"
    coco, classes = _load(annotations / f"instances_{image_set}.json")
    masks_dir = root / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    image_ids = sorted(coco.imgs)
    _STATE.update(coco=coco, classes=classes, masks_dir=masks_dir, overwrite=overwrite)
    try:
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                done = list(pool.imap(_write_one, image_ids, chunksize=64))
        else:
            done = [_write_one(i) for i in image_ids]
    finally:
        _STATE.clear()
    samples = []
    for image_id in image_ids:
        name = coco.imgs[image_id]["file_name"]
        samples.append(Sample(f"{image_set}/{name}", f"masks/{Path(name).stem}.png"))
    return sum(done), len(done) - sum(done), samples


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg.data.prepare.coco",
        description="COCO instance annotations -> masks/<id>.png (81 classes), splits/val.txt.",
    )
    parser.add_argument("root", type=Path, help="the folder holding train2017/, val2017/")
    parser.add_argument("--annotations", type=Path, help="default: ROOT/annotations")
    parser.add_argument("--sets", nargs="+", default=["train2017", "val2017"])
    parser.add_argument("--splits-dir", type=Path, help="default: ROOT/splits")
    parser.add_argument("--workers", type=int, default=1, help="processes (fork)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing masks")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SplitError(f"{args.root} does not exist; expected train2017/, val2017/, annotations/")
    parts = []
    for image_set in args.sets:
        written, kept, samples = build_masks(
            args.root, image_set, args.overwrite, args.workers, args.annotations
        )
        parts.append(f"{image_set}: wrote {written} masks, kept {kept}")
        if image_set.startswith("val"):
            parts.append(
                write_val_if_missing(args.splits_dir or args.root / "splits", samples, "images")
            )
    print("coco: " + "; ".join(parts))


if __name__ == "__main__":
    main()
