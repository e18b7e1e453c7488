"""The LightningDataModule: a labeled stream and, for semi-supervised methods, a paired
unlabeled stream (weak view, strong views, ignore mask, CutMix boxes, and the "mix" views).

Epoch length (`data.epoch_length`):
- `reference` (default), as the public code: a semi-supervised epoch is one pass over the
  unlabeled list, with the labeled list repeated (in file order, then truncated) to that length
  and shuffled by the sampler; the supervised baseline's epoch is one pass over the labeled list
  only, so its `max_epochs` are far fewer steps (Pascal 92 labels: 400 steps on 4 x 4 images).
- `unlabeled`: every method's epoch is the unlabeled length, so equal epochs are equal steps
  (the toy recipe's comparison, which counts steps anyway).

Domain adaptation (`source`, e.g. `train.py dataset=cityscapes source=gta5`): the labeled stream
is every training image of the source dataset (read with the source's own label map), the
unlabeled stream every training image of the split of `dataset` (its labeled and unlabeled lists
together: the target's labels are never trained on) and validation is the val list of `dataset`.
An epoch is then the longer of the two lists (GTA5's 24,966 images against Cityscapes' 2,975);
the shorter stream starts again when it runs out (Lightning's max_size_cycle).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from semiseg.data import acdc_toy, cd_toy, change, medical, toy
from semiseg.data.checks import check_batches, check_overlap, note_once, scan_images, world_size
from semiseg.data.datasets import LabeledDataset, UnlabeledDataset, ValDataset
from semiseg.data.spec import DatasetSpec, load_class_names
from semiseg.data.splits import Sample, Split, SplitError, SplitFiles
from semiseg.distributed import SigtermSafeLoader, worker_init
from semiseg.errors import ConfigError

EPOCH_LENGTHS = ("reference", "unlabeled")

__all__ = ["SemiSegDataModule", "ValidationData", "build_val_dataset", "load_class_names"]


def build_val_dataset(dataset, num_classes: int | None = None):
    """The validation set of a dataset config (eval.py): the same checks as training."""
    if dataset.get("format") in medical.FORMATS:
        root, splits_dir = Path(dataset.root), Path(dataset.splits_dir)
        val_file = splits_dir / (dataset.get("val_list") or "val.txt")
        if not val_file.is_file():
            raise SplitError(f"validation list {val_file} not found (dataset.val_list)")
        samples = medical.read_h5_list(val_file)
        medical.check_exist(root, samples, "val")
        return medical.VolumeDataset(root, samples)
    if dataset.get("format") == change.FORMAT:
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


class SemiSegDataModule(L.LightningDataModule):
    """`dataset` is the dataset config (conf/dataset/*.yaml): class names, label map, palette,
    split aliases, split generation and mask checks; `root` and `splits_dir` override it."""

    def __init__(
        self,
        root: str,
        splits_dir: str,
        split: str,
        crop_size: int,
        batch_size: int = 8,
        num_workers: int = 2,
        generate_toy: bool = False,
        unlabeled: bool = True,
        num_strong: int = 2,
        mix: str | None = "same",
        dataset: Mapping | None = None,
        epoch_length: str = "reference",
        source: Mapping | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.splits_dir = Path(splits_dir)
        self.split = split
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.generate_toy = generate_toy
        self.unlabeled = unlabeled
        self.num_strong = num_strong
        self.mix = mix
        if epoch_length not in EPOCH_LENGTHS:
            raise ConfigError(
                f"data.epoch_length={epoch_length!r} is unknown: use one of {', '.join(EPOCH_LENGTHS)}"
            )
        self.epoch_length = epoch_length
        self.spec = DatasetSpec.from_config(dataset, root=root, splits_dir=splits_dir)
        # dataset.format: images (image and mask files) | h5 (ACDC: HDF5 slices and volumes);
        # dataset.augment: natural (UniMatch's resize/crop/flip) | medical (data/medical.py);
        # | cd (image pairs A/, B/ and a change mask, data/change.py) with augment: change;
        # dataset.generate: acdc_toy / cd_toy writes a synthetic dataset into root on first use.
        self.format = (dataset or {}).get("format") or "images"
        self.augment = (dataset or {}).get("augment") or "natural"
        self.generate = (dataset or {}).get("generate")
        # The validation list in splits_dir of the h5 and cd layouts: ACDC's public code validates
        # (and reports) on valtest.txt, its val and test cases together; change detection on test.txt.
        self.val_list = (dataset or {}).get("val_list") or "val.txt"
        formats = (*medical.FORMATS, change.FORMAT)
        augments = (*medical.AUGMENTS, change.AUGMENT)
        if self.format not in formats:
            raise ConfigError(
                f"dataset.format={self.format!r} is unknown: use one of {', '.join(formats)}"
            )
        if self.augment not in augments:
            raise ConfigError(
                f"dataset.augment={self.augment!r} is unknown: use one of {', '.join(augments)}"
            )
        if (self.format == "h5") != (self.augment == "medical"):
            raise ConfigError(
                f"dataset.format={self.format} with dataset.augment={self.augment}: the medical "
                "augmentation reads HDF5 slices (format h5) and HDF5 slices need it"
            )
        if (self.format == change.FORMAT) != (self.augment == change.AUGMENT):
            raise ConfigError(
                f"dataset.format={self.format} with dataset.augment={self.augment}: image pairs "
                "(format cd) take the pair augmentation (augment change) and only they do"
            )
        if self.format != "images" and source is not None:
            raise ConfigError(
                f"dataset.format={self.format} does not support domain adaptation (source=)"
            )
        self.toy_domain = (dataset or {}).get("toy_domain") or toy.DEFAULT_DOMAIN
        # the labeled images' dataset under domain adaptation (None: the split's labeled list)
        self.source_spec = None
        self.source_toy_domain = None
        if source is not None:
            self.source_spec = DatasetSpec.from_config(source, key="source")
            if source.get("generate_toy"):
                self.source_toy_domain = source.get("toy_domain") or toy.DEFAULT_DOMAIN
        self.source_files: SplitFiles | None = None
        self.files = None
        self.split_folder: Path | None = None  # the folder the split was read from
        self.resolved_split: Split | None = None  # name, labeled count and folder, set up once
        self.class_names: list[str] | None = None

    def prepare_data(self) -> None:
        if self.generate == "acdc_toy":
            acdc_toy.ensure(self.root)
        elif self.generate == "cd_toy":
            cd_toy.ensure(self.root)
        elif self.generate is not None:
            raise ConfigError(
                f"dataset.generate={self.generate!r} is unknown: use acdc_toy, cd_toy or null"
            )
        if self.generate_toy:
            toy.ensure(self.root, domain=self.toy_domain)
        if self.source_toy_domain is not None:
            toy.ensure(self.source_spec.root, domain=self.source_toy_domain)

    def setup(self, stage: str | None = None) -> None:
        if self.files is not None:
            return
        spec, source = self.spec, self.source_spec
        spec.check_root()
        if source is not None:
            source.check_root()
        num_classes = None
        if spec.has_classes:
            self.class_names = spec.class_names()
            num_classes = len(self.class_names)
        if source is not None:
            check_same_classes(source, spec, self.class_names)
        self.resolved_split, note = spec.resolve_split(self.split)
        folder = self.resolved_split.folder
        if note:
            print(note, flush=True)
        if self.format == "h5":
            self._setup_h5(folder)
            return
        if self.format == change.FORMAT:
            self._setup_change(folder)
            return
        files = spec.load_files(folder)
        if source is not None:
            self._setup_adaptation(files, folder, num_classes)
            return
        if self.unlabeled and not files.unlabeled:
            raise SplitError(
                f"split '{self.split}' in {self.splits_dir} has no unlabeled.txt (or it is empty): "
                "semi-supervised methods need unlabeled images; use method=supervised"
            )
        overlap = check_overlap(files, folder, self.splits_dir / "val.txt")
        if overlap:
            note_once(overlap)
        scan_images(spec.root, files, spec.check_images)
        # Mask values and image/mask sizes: a bounded sample now, every mask again when loaded.
        reader = spec.mask_reader(num_classes)
        spec.verify_masks(files.labeled, reader, warn_0_255=True)
        spec.verify_masks(files.val, reader)
        # Unlabeled masks only feed the pseudo-label accuracy log: mapped, never checked.
        gt_reader = spec.mask_reader(num_classes, check=False)

        self.labeled_set = LabeledDataset(
            self.root,
            files.labeled,
            self.crop_size,
            length=self._labeled_length(files),
            read_mask=reader,
        )
        self.unlabeled_set = None
        if self.unlabeled:
            self.unlabeled_set = UnlabeledDataset(
                self.root,
                files.unlabeled,
                self.crop_size,
                self.num_strong,
                self.mix,
                read_mask=gt_reader,
            )
        self.val_set = ValDataset(self.root, files.val, read_mask=reader)
        self._check_batches()
        self.split_folder = folder
        self.files = files

    def _setup_adaptation(self, files: SplitFiles, folder: Path, num_classes: int | None) -> None:
        """Labeled: the source dataset's training images; unlabeled: the split's images of the
        target (`dataset`), its labeled list included; val: the target's val list."""
        spec, source = self.spec, self.source_spec
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
        if self.unlabeled or self.epoch_length == "unlabeled":
            length = max(length, len(pool))
        self.labeled_set = LabeledDataset(
            source.root,
            source_files.labeled,
            self.crop_size,
            length=length,
            read_mask=source_reader,
        )
        self.unlabeled_set = None
        if self.unlabeled:
            self.unlabeled_set = UnlabeledDataset(
                self.root, pool, self.crop_size, self.num_strong, self.mix, read_mask=gt_reader
            )
        self.val_set = ValDataset(self.root, target.val, read_mask=reader)
        self._check_batches()
        self.split_folder = folder
        self.source_files = source_files
        self.files = SplitFiles(
            labeled=source_files.labeled, unlabeled=pool, val=files.val, root=spec.root
        )

    def _setup_h5(self, folder: Path) -> None:
        """ACDC's layout (data/medical.py): one HDF5 file per line, the medical augmentation,
        whole volumes for validation."""
        labeled = medical.read_h5_list(folder / "labeled.txt")
        unlabeled_file = folder / "unlabeled.txt"
        unlabeled = medical.read_h5_list(unlabeled_file) if unlabeled_file.is_file() else []
        val_file = self.splits_dir / self.val_list
        if not val_file.is_file():
            raise SplitError(
                f"validation list {val_file} not found (dataset.val_list={self.val_list}): copy "
                "UniMatch's splits/acdc/ into the splits folder, or name your list with "
                "dataset.val_list=FILE"
            )
        val = medical.read_h5_list(val_file)
        if self.unlabeled and not unlabeled:
            raise SplitError(
                f"split '{self.split}' in {self.splits_dir} has no unlabeled.txt (or it is empty): "
                "semi-supervised methods need unlabeled images; use method=supervised"
            )
        if not val:
            raise SplitError(f"{val_file} lists no volumes")
        for what, samples in (("labeled", labeled), ("unlabeled", unlabeled), ("val", val)):
            medical.check_exist(self.root, samples, what)
        files = SplitFiles(labeled=labeled, unlabeled=unlabeled, val=val, root=self.root)
        self.labeled_set = medical.SliceLabeledDataset(
            self.root, labeled, self.crop_size, length=self._labeled_length(files)
        )
        self.unlabeled_set = None
        if self.unlabeled:
            self.unlabeled_set = medical.SliceUnlabeledDataset(
                self.root, unlabeled, self.crop_size, self.num_strong, self.mix
            )
        self.val_set = medical.VolumeDataset(self.root, val)
        self._check_batches()
        self.split_folder = folder
        self.files = files

    def _setup_change(self, folder: Path) -> None:
        """Image pairs and their change masks (data/change.py), validated on `dataset.val_list`
        (test.txt: the list the public remote-sensing code evaluates)."""
        labeled, unlabeled, val = change.build_sets(
            self.root, self.splits_dir, folder, self.val_list, self.unlabeled
        )
        files = SplitFiles(labeled=labeled, unlabeled=unlabeled, val=val, root=self.root)
        self.labeled_set = change.ChangeLabeledDataset(
            self.root, labeled, self.crop_size, length=self._labeled_length(files)
        )
        self.unlabeled_set = None
        if self.unlabeled:
            self.unlabeled_set = change.ChangeUnlabeledDataset(
                self.root, unlabeled, self.crop_size, self.num_strong, self.mix
            )
        self.val_set = change.ChangeValDataset(self.root, val)
        self._check_batches()
        self.split_folder = folder
        self.files = files

    def _check_batches(self) -> None:
        """What the loaders really yield per epoch (the labeled list may be repeated) must fill
        at least one batch on every process."""
        streams = {"labeled": len(self.labeled_set)}
        if self.unlabeled_set is not None:
            streams["unlabeled"] = len(self.unlabeled_set)
        check_batches(streams, self.batch_size, world_size())

    def _labeled_length(self, files) -> int:
        """How many labeled samples one epoch draws (see the module docstring)."""
        if self.unlabeled or self.epoch_length == "unlabeled":
            # Longer labeled lists are kept whole (the V1 code would truncate them to the
            # unlabeled length; Cityscapes 1/2 has 1488 labeled and 1487 unlabeled images).
            return max(len(files.labeled), len(files.unlabeled))
        return len(files.labeled)

    def _train_loader(self, dataset, stream: int) -> DataLoader:
        # drop_last: BatchNorm after ASPP image pooling fails on a batch of one.
        sampler = self._distributed_sampler(dataset, stream)
        return SigtermSafeLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=False,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=worker_init,  # workers outlive a SIGTERM to the process group
        )

    def _distributed_sampler(self, dataset, stream: int) -> DistributedSampler | None:
        """Under DDP, one sampler per stream with its own seed (`stream` 0 labeled, 1 unlabeled).

        Lightning would give every loader a DistributedSampler with the same seed: with the
        labeled list repeated to the unlabeled length, labeled image j mod n would then always be
        drawn with unlabeled image j. Independent seeds draw the two streams independently, as
        separate RandomSamplers do on one device. Lightning still calls set_epoch on them."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) + 1000 * stream
        return DistributedSampler(
            dataset, trainer.world_size, trainer.global_rank, shuffle=True, seed=seed
        )

    def train_dataloader(self):
        labeled = self._train_loader(self.labeled_set, stream=0)
        if self.unlabeled_set is None:
            return labeled
        return {"labeled": labeled, "unlabeled": self._train_loader(self.unlabeled_set, stream=1)}

    def val_dataloader(self) -> DataLoader:
        return val_loader(self.val_set, self.trainer, self.num_workers)


def val_loader(val_set, trainer, num_workers: int) -> DataLoader:
    """Whole images of different sizes: one per batch, as the papers evaluate. Under DDP each
    rank reads every N-th image and none twice (Lightning's default sampler would repeat images
    to even out the ranks, and the summed confusion matrix would count them twice)."""
    from semiseg.distributed import ShardSampler

    sampler = None
    if trainer is not None and trainer.world_size > 1:
        if len(val_set) < trainer.world_size:
            raise SplitError(
                f"the validation list has {len(val_set)} images, fewer than the "
                f"{trainer.world_size} processes: every rank needs at least one"
            )
        sampler = ShardSampler(val_set, trainer.world_size, trainer.global_rank)
    return SigtermSafeLoader(
        val_set,
        batch_size=1,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init,
    )


class ValidationData(L.LightningDataModule):
    """The validation set alone (eval.py), loaded as training validation loads it."""

    def __init__(self, val_set, num_workers: int = 0):
        super().__init__()
        self.val_set = val_set
        self.num_workers = num_workers

    def val_dataloader(self) -> DataLoader:
        return val_loader(self.val_set, self.trainer, self.num_workers)
