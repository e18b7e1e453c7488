"""Checks of a split's lists that run at setup, so that bad input fails (or is reported) before
training instead of as a silent wrong number or a crash mid-run."""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from semiseg.data.splits import Sample, SplitError, SplitFiles

SHOWN = 3  # examples named in a message
SCAN_BAR_FROM = 2000  # files; shorter scans take a moment and show no progress bar


def world_size() -> int:
    """Processes sharing the training batches (the data module is set up before the Trainer)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def _not_rank_zero() -> bool:
    return int(os.environ.get("RANK", 0)) != 0


def note_once(message: str) -> None:
    """Print once per run, not once per rank."""
    if not _not_rank_zero():
        print(message, flush=True)


def _images(samples: list[Sample]) -> set[str]:
    return {os.path.normpath(s.image) for s in samples}


def _examples(shared: set[str]) -> str:
    return ", ".join(sorted(shared)[:SHOWN])


def volume_name(path: str) -> str:
    """The scan an ACDC file belongs to: `.../patient001_frame01_slice_3.h5` (a training slice)
    and `.../patient001_frame01.h5` (a validation volume) are both `patient001_frame01`."""
    return re.sub(r"_slice_\d+$", "", Path(path).stem)


def check_overlap(
    files: SplitFiles, split_folder: Path, val_file: Path, same_scan=None
) -> str | None:
    """Refuse validation images that are also training images (the score would be inflated);
    return a warning when labeled images are also in the unlabeled list. `same_scan`: a name
    under which a training file and a validation file are the same data (ACDC: a slice of a
    validation volume, see volume_name); by default the image path."""
    key = same_scan or os.path.normpath
    val = {key(s.image) for s in files.val}
    for name, samples in (("labeled", files.labeled), ("unlabeled", files.unlabeled)):
        shared = {s.image for s in samples if key(s.image) in val}
        if shared:
            raise SplitError(
                f"{len(shared)} images of {split_folder / (name + '.txt')} are also in {val_file} "
                f"(e.g. {_examples(shared)}): validation images must not be trained on; "
                "remove them from one of the lists"
            )
    shared = _images(files.labeled) & _images(files.unlabeled)
    if shared:
        return (
            f"warning: {len(shared)} images are in both labeled.txt and unlabeled.txt of "
            f"{split_folder} (e.g. {_examples(shared)}); they are also trained on without labels"
        )
    return None


def check_batches(streams: dict[str, int], batch_size: int, processes: int) -> None:
    """Every training loader must yield at least one batch per epoch: batches are dropped when
    incomplete (drop_last), so a shorter list would train zero steps and report success."""
    needed = batch_size * processes
    for name, length in streams.items():
        if length < needed:
            on = f"{processes} processes x " if processes > 1 else ""
            raise SplitError(
                f"the {name} stream has {length} images per epoch, fewer than one batch "
                f"({on}data.batch_size={batch_size}): no step would be trained; "
                "lower data.batch_size or use a larger split"
            )


def drop_missing_unlabeled_masks(files: SplitFiles, root: Path) -> str | None:
    """Masks of unlabeled images only feed the pseudo-label accuracy log: a missing one is
    dropped (that image is then left out of the log), not an error."""
    missing = [s for s in files.unlabeled if s.mask is not None and not (root / s.mask).is_file()]
    if not missing:
        return None
    gone = {s.mask for s in missing}
    files.unlabeled = [Sample(s.image, None) if s.mask in gone else s for s in files.unlabeled]
    return (
        f"note: {len(missing)} masks named in unlabeled.txt do not exist (e.g. "
        f"{_examples(gone)}); they only feed the pseudo-label accuracy log, which skips them"
    )


def scan_images(root: Path, files: SplitFiles, limit: int) -> None:
    """Decode every listed image and labeled/val mask (`dataset.check_images`: up to `limit`
    files; -1 all, 0 none), so a truncated or unreadable file fails now, named, instead of in a
    DataLoader worker mid-run."""
    paths = list(
        dict.fromkeys(
            [s.image for s in (*files.labeled, *files.unlabeled, *files.val)]
            + [s.mask for s in (*files.labeled, *files.val)]
        )
    )
    if limit == 0:
        return
    if 0 < limit < len(paths):
        note_once(
            f"note: {len(paths)} images and masks are listed, more than dataset.check_images="
            f"{limit}: they are not scanned before training (dataset.check_images=-1 scans all)"
        )
        return
    for rel in tqdm(
        paths,
        desc="checking images",
        unit="img",
        disable=len(paths) < SCAN_BAR_FROM or _not_rank_zero(),
    ):
        path = root / rel
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise SplitError(
                f"cannot read {path}: {e}; replace or re-create the file (or remove it from "
                "the lists)"
            ) from None
