"""What select_images.py writes into `output`: the next round's split in the public layout
(`<output>/<name>/labeled.txt`, `unlabeled.txt` and `<output>/val.txt`, so that
`train.py dataset.splits_dir=<output> split=<name>` trains on it), scores.csv and a contact sheet
of the chosen images beside their uncertainty maps. The old split is never written to."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePosixPath

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from semiseg.data.splits import Sample, SplitError, read_list, write_list, write_split
from semiseg.errors import ConfigError

SHEET_COLUMNS = 4  # chosen images per row of the contact sheet
SHEET_MAX = 48  # chosen images shown on the sheet (scores.csv lists them all)
TILE = 96  # px of each image and map on the sheet


def mask_path_for(image: str, labeled: list[Sample]) -> str:
    """Where a newly chosen image's mask is expected when unlabeled.txt names none: beside the
    labeled masks, with the image's stem and the labeled masks' suffix (images/x.jpg with
    labeled masks masks/*.png -> masks/x.png)."""
    example = next((s.mask for s in labeled if s.mask), None)
    if example is None:
        raise SplitError("the labeled list names no masks: cannot say where new masks go")
    folder, suffix = PurePosixPath(example).parent, PurePosixPath(example).suffix
    return str(folder / (PurePosixPath(image).stem + suffix))


def next_round(
    labeled: list[Sample], pool: list[Sample], chosen, masks_listed: bool = True
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(new labeled list, new unlabeled list, the chosen samples): the old labeled list then the
    chosen in the order chosen, each with its mask (listed, or where it is expected) where
    `masks_listed` (image datasets; HDF5 slices and change pairs list one name per line); the
    rest of the pool in its old order."""
    chosen = [int(i) for i in chosen]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"chosen indices repeat: {chosen}")
    picked = [
        Sample(pool[i].image, pool[i].mask or mask_path_for(pool[i].image, labeled))
        if masks_listed
        else pool[i]
        for i in chosen
    ]
    taken = set(chosen)
    rest = [s for i, s in enumerate(pool) if i not in taken]
    return [*labeled, *picked], rest, picked


def write_next_split(
    output: Path,
    name: str,
    labeled: list[Sample],
    unlabeled: list[Sample],
    val_file: Path,
    masks_listed: bool = True,
) -> Path:
    """`<output>/<name>/labeled.txt`, `unlabeled.txt` and `<output>/<val_file.name>` (the old
    validation list, unless `output` is the old splits folder; checked as image-and-mask pairs
    where `masks_listed`, else copied as it is). Refuses a split that exists."""
    refuse_existing(output / name)
    folder = write_split(output, name, labeled, unlabeled)
    target = output / val_file.name
    if not (target.exists() and target.resolve() == val_file.resolve()):
        if masks_listed:
            write_list(target, read_list(val_file, require_mask=True))
        else:
            write_atomic(target, val_file.read_bytes())
    return folder


def refuse_existing(folder: Path) -> None:
    if (folder / "labeled.txt").exists():
        raise ConfigError(
            f"{folder / 'labeled.txt'} exists: give another output=DIR or split_name=NAME "
            "(a split is never overwritten)"
        )


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_scores_csv(
    path: Path, units: list[str], scores: dict, chosen, column: str = "image"
) -> None:
    """One row per pool unit (image, pair, slice or case) in pool order: its scores and, if
    chosen, its rank (1 = first)."""
    rank = {int(i): k + 1 for k, i in enumerate(chosen)}
    names = [n for n in ("entropy", "margin", "disagreement") if scores.get(n) is not None]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", column, *names, "chosen_rank"])
    for i, unit in enumerate(units):
        values = [f"{float(scores[n][i]):.6f}" for n in names]
        writer.writerow([i, unit, *values, rank.get(i, "")])
    write_atomic(path, text.getvalue().encode())


def contact_sheet(
    path: Path, thumbnails: list[list[Image.Image]], maps: list[np.ndarray], labels: list[str]
) -> int:
    """The chosen images (up to SHEET_MAX; a pair shows both images) each beside its uncertainty
    map (magma: dark is certain, bright uncertain, on one 0..1 scale), captioned; returns how
    many are shown."""
    shown = min(len(thumbnails), SHEET_MAX)
    rows = max(1, -(-shown // SHEET_COLUMNS))
    per_cell = max((len(t) for t in thumbnails[:shown]), default=1) + 1
    cell_w, cell_h = per_cell * TILE + 8, TILE + 16
    sheet = Image.new("RGB", (SHEET_COLUMNS * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    cmap = colormaps["magma"]
    for k in range(shown):
        x, y = (k % SHEET_COLUMNS) * cell_w, (k // SHEET_COLUMNS) * cell_h
        for j, thumb in enumerate(thumbnails[k]):
            sheet.paste(thumb.convert("RGB").resize((TILE, TILE)), (x + j * TILE, y))
        heat = (cmap(np.clip(maps[k], 0, 1))[..., :3] * 255).astype(np.uint8)
        heat_x = x + len(thumbnails[k]) * TILE
        sheet.paste(Image.fromarray(heat).resize((TILE, TILE), Image.NEAREST), (heat_x, y))
        draw.text((x + 2, y + TILE + 2), labels[k], fill="black")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return shown
