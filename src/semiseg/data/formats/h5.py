"""HDF5 slices and volumes (dataset.format: h5, ACDC): one file per line of the split lists,
the medical augmentation (data/medical.py), whole volumes for validation."""

from __future__ import annotations

from pathlib import Path

from semiseg.data import medical
from semiseg.data.checks import check_overlap, note_once, volume_name
from semiseg.data.splits import SplitError, SplitFiles

AUGMENT = "medical"
TAKES_SOURCE = False


def setup(dm, folder: Path, num_classes: int | None) -> None:
    """ACDC's layout (data/medical.py): one HDF5 file per line, the medical augmentation,
    whole volumes for validation."""
    labeled = medical.read_h5_list(folder / "labeled.txt")
    unlabeled_file = folder / "unlabeled.txt"
    unlabeled = medical.read_h5_list(unlabeled_file) if unlabeled_file.is_file() else []
    val_file = dm.splits_dir / dm.val_list
    if not val_file.is_file():
        raise SplitError(
            f"validation list {val_file} not found (dataset.val_list={dm.val_list}): copy "
            "UniMatch's splits/acdc/ into the splits folder, or name your list with "
            "dataset.val_list=FILE"
        )
    val = medical.read_h5_list(val_file)
    if dm.unlabeled and not unlabeled:
        raise SplitError(
            f"split '{dm.split}' in {dm.splits_dir} has no unlabeled.txt (or it is empty): "
            "semi-supervised methods need unlabeled images; use method=supervised"
        )
    if not val:
        raise SplitError(f"{val_file} lists no volumes")
    for what, samples in (("labeled", labeled), ("unlabeled", unlabeled), ("val", val)):
        medical.check_exist(dm.root, samples, what)
    files = SplitFiles(labeled=labeled, unlabeled=unlabeled, val=val, root=dm.root)
    # a slice of a validation volume trained on would inflate the mean Dice
    overlap = check_overlap(files, folder, val_file, same_scan=volume_name)
    if overlap:
        note_once(overlap)
    dm.labeled_set = medical.SliceLabeledDataset(
        dm.root, labeled, dm.crop_size, length=dm._labeled_length(files)
    )
    dm.unlabeled_set = None
    if dm.unlabeled:
        dm.unlabeled_set = medical.SliceUnlabeledDataset(
            dm.root, unlabeled, dm.crop_size, dm.num_strong, dm.mix
        )
    dm.val_set = medical.VolumeDataset(dm.root, val)
    dm.files = files


def val_set(dataset, num_classes: int | None = None) -> medical.VolumeDataset:
    """The validation volumes of a dataset config (eval.py)."""
    root, splits_dir = Path(dataset.root), Path(dataset.splits_dir)
    val_file = splits_dir / (dataset.get("val_list") or "val.txt")
    if not val_file.is_file():
        raise SplitError(f"validation list {val_file} not found (dataset.val_list)")
    samples = medical.read_h5_list(val_file)
    medical.check_exist(root, samples, "val")
    return medical.VolumeDataset(root, samples)
