"""Natural images (dataset.format: images): image and mask files listed by split files, the
UniMatch augmentation (resize, crop, flip; colour jitter, blur and CutMix boxes for the strong
views), whole images for validation; also the domain-adaptation setting (`source=`)."""

from __future__ import annotations

import os
from pathlib import Path

from semiseg.data.checks import check_overlap, note_once, scan_images
from semiseg.data.datasets import LabeledDataset, UnlabeledDataset, ValDataset
from semiseg.data.spec import DatasetSpec
from semiseg.data.splits import Sample, SplitError, SplitFiles

AUGMENT = "natural"  # the dataset.augment this format takes
TAKES_SOURCE = True  # domain adaptation (source=) is possible


def setup(dm, folder: Path, num_classes: int | None) -> None:
    """The data module's labeled, unlabeled and validation sets of the split in `folder`."""
    spec, source = dm.spec, dm.source_spec
    files = spec.load_files(folder)
    if source is not None:
        setup_adaptation(dm, files, folder, num_classes)
        return
    if dm.unlabeled and not files.unlabeled:
        raise SplitError(
            f"split '{dm.split}' in {dm.splits_dir} has no unlabeled.txt (or it is empty): "
            "semi-supervised methods need unlabeled images; use method=supervised"
        )
    overlap = check_overlap(files, folder, dm.splits_dir / "val.txt")
    if overlap:
        note_once(overlap)
    scan_images(spec.root, files, spec.check_images)
    # Mask values and image/mask sizes: a bounded sample now, every mask again when loaded.
    reader = spec.mask_reader(num_classes)
    spec.verify_masks(files.labeled, reader, warn_0_255=True)
    spec.verify_masks(files.val, reader)
    # Unlabeled masks only feed the pseudo-label accuracy log: mapped, never checked.
    gt_reader = spec.mask_reader(num_classes, check=False)

    dm.labeled_set = LabeledDataset(
        dm.root,
        files.labeled,
        dm.crop_size,
        length=dm._labeled_length(files),
        read_mask=reader,
        pad_fill=dm.pad_fill,
        resize=dm.resize,
        pad_label=dm.labeled_pad_label,
        augment=dm.labeled_aug,
        scale=dm.labeled_scale,
    )
    dm.unlabeled_set = None
    if dm.unlabeled:
        dm.unlabeled_set = UnlabeledDataset(
            dm.root,
            files.unlabeled,
            dm.crop_size,
            dm.num_strong,
            dm.mix,
            read_mask=gt_reader,
            pad_fill=dm.pad_fill,
            resize=dm.resize,
            crop=dm.unlabeled_crop,
        )
    dm.val_set = ValDataset(dm.root, files.val, read_mask=reader)
    dm.files = files


def setup_adaptation(dm, files: SplitFiles, folder: Path, num_classes: int | None) -> None:
    """Labeled: the source dataset's training images; unlabeled: the split's images of the
    target (`dataset`), its labeled list included; val: the target's val list."""
    spec, source = dm.spec, dm.source_spec
    source_files = source.load_source()
    pool = list({s.image: s for s in (*files.labeled, *files.unlabeled)}.values())
    target = SplitFiles(labeled=[], unlabeled=pool, val=files.val, root=spec.root)
    message = check_source_overlap(source_files, target, source.name, spec.name)
    if message:
        note_once(message)
    note_once(
        f"domain adaptation: {len(source_files.labeled)} labeled images of {source.name} "
        f"({source.root}), {len(pool)} unlabeled images of {spec.name} (split {folder.name}, "
        f"labels unused), validation on {len(files.val)} images of {spec.name}"
    )
    scan_images(source.root, source_files, source.check_images)
    scan_images(spec.root, target, spec.check_images)
    source_reader = source.mask_reader(num_classes)
    source.verify_masks(source_files.labeled, source_reader)
    reader = spec.mask_reader(num_classes)
    spec.verify_masks(target.val, reader)
    gt_reader = spec.mask_reader(num_classes, check=False)

    length = len(source_files.labeled)
    if dm.unlabeled or dm.epoch_length == "unlabeled":
        length = max(length, len(pool))
    # DAFormer's pipelines (data.uda_pipeline): fixed resizes, the cat_max_ratio source crop.
    pipeline = dm.uda_pipeline or {}
    dm.labeled_set = LabeledDataset(
        source.root,
        source_files.labeled,
        dm.crop_size,
        length=length,
        read_mask=source_reader,
        pad_fill=dm.pad_fill,
        resize=pipeline.get("source_resize") or "long_side",
        cat_max_ratio=pipeline.get("cat_max_ratio"),
    )
    dm.unlabeled_set = None
    if dm.unlabeled:
        dm.unlabeled_set = UnlabeledDataset(
            dm.root, pool, dm.crop_size, dm.num_strong, dm.mix, read_mask=gt_reader,
            pad_fill=dm.pad_fill, resize=pipeline.get("target_resize") or "long_side",
        )  # fmt: skip
    dm.val_set = ValDataset(dm.root, target.val, read_mask=reader)
    dm.source_files = source_files
    dm.files = SplitFiles(
        labeled=source_files.labeled, unlabeled=pool, val=files.val, root=spec.root
    )


def val_set(dataset, num_classes: int | None = None) -> ValDataset:
    """The validation images of a dataset config (eval.py), checked as in training."""
    spec = DatasetSpec.from_config(dataset)
    spec.check_root()
    files = spec.load_val()
    scan_images(spec.root, files, spec.check_images)
    reader = spec.mask_reader(num_classes)
    spec.verify_masks(files.val, reader)
    return ValDataset(spec.root, files.val, read_mask=reader)


def check_same_classes(source: DatasetSpec, target: DatasetSpec, names: list[str] | None) -> None:
    """A source dataset must label the target's classes, in the same order."""
    if not source.has_classes or names is None:
        return
    theirs = source.class_names()
    if theirs != names:
        differ = next(
            (
                f"class {i} is {a!r} there, {b!r} here"
                for i, (a, b) in enumerate(zip(theirs, names, strict=False))
                if a != b
            ),
            f"{len(theirs)} classes there, {len(names)} here",
        )
        raise SplitError(
            f"source={source.name} labels other classes than dataset={target.name} ({differ}): "
            "the source must label the target's classes in the same order (its label_map maps "
            "them)"
        )


def check_source_overlap(
    source: SplitFiles, target: SplitFiles, source_name: str, target_name: str
) -> str | None:
    """Source and target lists are relative to different roots: compare the files themselves.
    A source image that is a target validation image fails; one that is also an unlabeled
    target image is only reported."""
    labeled = {_absolute(source.root, s) for s in source.labeled}
    val = labeled & {_absolute(target.root, s) for s in target.val}
    if val:
        raise SplitError(
            f"{len(val)} labeled images of source={source_name} are validation images of "
            f"dataset={target_name} (e.g. {sorted(val)[0]}): validation images must not be "
            "trained on; use another source or dataset"
        )
    shared = labeled & {_absolute(target.root, s) for s in target.unlabeled}
    if shared:
        return (
            f"warning: {len(shared)} labeled images of source={source_name} are also unlabeled "
            f"images of dataset={target_name} (e.g. {sorted(shared)[0]})"
        )
    return None


def _absolute(root: Path | None, sample: Sample) -> str:
    return os.path.normpath(os.path.abspath(Path(root) / sample.image))
