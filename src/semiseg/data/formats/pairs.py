"""Image pairs (dataset.format: cd, WHU-CD / LEVIR-CD): A/, B/ and a change mask per name, the
pair augmentation (data/change.py), whole pairs for validation on `dataset.val_list`."""

from __future__ import annotations

from pathlib import Path

from semiseg.data import change
from semiseg.data.checks import check_overlap, note_once
from semiseg.data.splits import SplitError, SplitFiles

AUGMENT = "change"
TAKES_SOURCE = False


def setup(dm, folder: Path, num_classes: int | None) -> None:
    """Image pairs and their change masks (data/change.py), validated on `dataset.val_list`
    (test.txt: the list the public remote-sensing code evaluates)."""
    labeled, unlabeled, val = change.build_sets(
        dm.root, dm.splits_dir, folder, dm.val_list, dm.unlabeled
    )
    files = SplitFiles(labeled=labeled, unlabeled=unlabeled, val=val, root=dm.root)
    overlap = check_overlap(files, folder, dm.splits_dir / dm.val_list)
    if overlap:
        note_once(overlap)
    dm.labeled_set = change.ChangeLabeledDataset(
        dm.root, labeled, dm.crop_size, length=dm._labeled_length(files)
    )
    dm.unlabeled_set = None
    if dm.unlabeled:
        dm.unlabeled_set = change.ChangeUnlabeledDataset(
            dm.root, unlabeled, dm.crop_size, dm.num_strong, dm.mix
        )
    dm.val_set = change.ChangeValDataset(dm.root, val)
    dm.files = files


def val_set(dataset, num_classes: int | None = None) -> change.ChangeValDataset:
    """The validation pairs of a dataset config (eval.py)."""
    root, splits_dir = Path(dataset.root), Path(dataset.splits_dir)
    val_list = dataset.get("val_list") or "val.txt"
    if not root.is_dir():
        raise SplitError(
            f"dataset.root {root} does not exist: point it at the dataset "
            f"(dataset.root=DIR); expected layout: {change.LAYOUT}"
        )
    val = change.read_names(splits_dir / val_list)
    change.check_pairs(root, val, val_list, labels=True)
    return change.ChangeValDataset(root, val)
