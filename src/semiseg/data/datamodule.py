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
import torch
from torch.utils.data import DataLoader

from semiseg.data import acdc_toy, cd_toy, toy
from semiseg.data.checks import check_batches, note_once, world_size
from semiseg.data.formats import FORMATS
from semiseg.data.formats.natural import check_same_classes
from semiseg.data.rare_class import RareClassSampling
from semiseg.data.sampling import STREAM_STRIDE, EpochSampler, SeededItems
from semiseg.data.spec import DatasetSpec, load_class_names
from semiseg.data.splits import Split, SplitError, SplitFiles
from semiseg.data.transforms import PAD_FILLS, RESIZES
from semiseg.distributed import SigtermSafeLoader, worker_init
from semiseg.errors import ConfigError

EPOCH_LENGTHS = ("reference", "unlabeled")

__all__ = ["SemiSegDataModule", "ValidationData", "build_val_dataset", "load_class_names"]


UDA_PIPELINE_KEYS = ("source_resize", "target_resize", "cat_max_ratio")


def check_uda_pipeline(pipeline: Mapping | None, source: Mapping | None) -> dict | None:
    """data.uda_pipeline: {source_resize: [W, H], target_resize: [W, H], cat_max_ratio: r}
    (each may be null), only with a source dataset."""
    if not pipeline:
        return None
    pipeline = dict(pipeline)
    unknown = sorted(set(pipeline) - set(UDA_PIPELINE_KEYS))
    if unknown:
        raise ConfigError(
            f"data.uda_pipeline: unknown key(s) {unknown}; use {', '.join(UDA_PIPELINE_KEYS)}"
        )
    if source is None:
        raise ConfigError(
            "data.uda_pipeline sets the domain-adaptation pipelines: set source=... too, or "
            "data.uda_pipeline=null"
        )
    for key in ("source_resize", "target_resize"):
        size = pipeline.get(key)
        if size is not None and (len(size) != 2 or min(int(v) for v in size) < 1):
            raise ConfigError(f"data.uda_pipeline.{key}={list(size)}: give [width, height] > 0")
    ratio = pipeline.get("cat_max_ratio")
    if ratio is not None and not 0 < float(ratio) <= 1:
        raise ConfigError(f"data.uda_pipeline.cat_max_ratio={ratio}: use a share in (0, 1]")
    return {key: pipeline.get(key) for key in UDA_PIPELINE_KEYS}


LABELED_AUGS = ("unimatch", "reco")


def check_labeled_aug(labeled_aug: str, scale) -> tuple[str, tuple[float, float]]:
    if labeled_aug not in LABELED_AUGS:
        raise ConfigError(
            f"data module labeled_aug={labeled_aug!r} is unknown: use one of "
            f"{', '.join(LABELED_AUGS)}"
        )
    scale = tuple(float(v) for v in scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ConfigError(
            f"method.labeled_scale={list(scale)}: give [low, high] with 0 < low <= high"
        )
    return labeled_aug, scale


def build_val_dataset(dataset, num_classes: int | None = None):
    """The validation set of a dataset config (eval.py): the same checks as training."""
    return FORMATS[dataset.get("format") or "images"].val_set(dataset, num_classes)


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
        rare_class_sampling: Mapping | None = None,
        pad_fill: str = "zero",
        uda_pipeline: Mapping | None = None,
        resize: str = "long_side",
        labeled_pad_label: int = 255,
        labeled_aug: str = "unimatch",
        labeled_scale: tuple[float, float] = (0.5, 1.5),
        unlabeled_crop: str = "unimatch",
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
        # DAFormer's rare-class sampling of the source images (data/rare_class.py), or None.
        self.rare_class_sampling = dict(rare_class_sampling) if rare_class_sampling else None
        if self.rare_class_sampling is not None and source is None:
            raise ConfigError(
                "data.rare_class_sampling samples the source domain's labeled images: set "
                "source=... too, or data.rare_class_sampling=null"
            )
        # DAFormer's fixed resizes and cat_max_ratio crop (natural.setup_adaptation), or None.
        self.uda_pipeline = check_uda_pipeline(uda_pipeline, source)
        # The image fill of the crop padding (natural images): zero, or the mean colour that
        # iMAS and AugSeg ask for through their data requirements (method.pad_fill).
        if pad_fill not in PAD_FILLS:
            raise ConfigError(
                f"method.pad_fill={pad_fill!r} is unknown: use one of {', '.join(PAD_FILLS)}"
            )
        self.pad_fill = pad_fill
        # Natural images, asked for by FST (method.resize, method.labeled_pad_label): how the
        # random resize draws (transforms.RESIZES) and the label of the labeled crops' padding.
        if resize not in RESIZES:
            raise ConfigError(
                f"method.resize={resize!r} is unknown: use one of {', '.join(RESIZES)}"
            )
        if not (isinstance(labeled_pad_label, int) and 0 <= labeled_pad_label <= 255):
            raise ConfigError(
                f"method.labeled_pad_label={labeled_pad_label!r}: a class index, or 255 to "
                "leave the padding out of the loss"
            )
        self.resize, self.labeled_pad_label = resize, labeled_pad_label
        # Natural images, asked for by CSS (method.labeled_aug, method.unlabeled_crop): the
        # labeled crops by UniMatch's resize, crop and flip, or by ReCo's rescale, reflection
        # padding, crop, jitter, blur and flip (data/reco_labeled.py) with its scale range; the
        # unlabeled crops by UniMatch's, or ReCo's plain crop with reflection padding.
        self.labeled_aug, self.labeled_scale = check_labeled_aug(labeled_aug, labeled_scale)
        if unlabeled_crop not in LABELED_AUGS:
            raise ConfigError(
                f"data module unlabeled_crop={unlabeled_crop!r} is unknown: use one of "
                f"{', '.join(LABELED_AUGS)}"
            )
        self.unlabeled_crop = unlabeled_crop
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
        if self.format not in FORMATS:
            raise ConfigError(
                f"dataset.format={self.format!r} is unknown: use one of {', '.join(FORMATS)}"
            )
        if self.augment != FORMATS[self.format].AUGMENT:
            takes = FORMATS[self.format].AUGMENT
            raise ConfigError(
                f"dataset.format={self.format} with dataset.augment={self.augment}: "
                f"format {self.format} takes augment {takes}"
            )
        if source is not None and not FORMATS[self.format].TAKES_SOURCE:
            raise ConfigError(
                f"dataset.format={self.format} does not support domain adaptation (source=)"
            )
        reco = "reco" in (self.labeled_aug, self.unlabeled_crop)
        if reco and (self.augment != "natural" or source is not None):
            # ReCo's crops are defined on natural RGB images of the split
            where = "domain adaptation" if source is not None else f"dataset.augment={self.augment}"
            note_once(
                "ReCo's crops (method.labeled_aug=public, method.unlabeled_crop=public) are for "
                f"natural images; {where} keeps its own pipelines"
            )
            self.labeled_aug = self.unlabeled_crop = "unimatch"
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
        fmt = FORMATS[self.format]
        fmt.setup(self, folder, num_classes)
        if self.rare_class_sampling is not None:
            cache = Path(self.source_spec.root) / "rare_class_pixels.json"
            writable = os.access(cache.parent, os.W_OK)
            self.labeled_set = RareClassSampling(
                self.labeled_set, **self.rare_class_sampling, cache=cache if writable else None
            )
        self._check_batches()
        self.split_folder = folder

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
        # The sampler draws the order and every sample's augmentation seed (data/sampling.py);
        # the loader's own generator draws its workers' base seed, so creating an iterator
        # leaves the process's generators alone (a resumed run creates them at other times).
        return SigtermSafeLoader(
            SeededItems(dataset),
            batch_size=self.batch_size,
            sampler=self._epoch_sampler(dataset, stream),
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=False,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=worker_init,  # workers outlive a SIGTERM to the process group
            generator=torch.Generator().manual_seed(self._seed(stream)),
        )

    def _seed(self, stream: int) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) + STREAM_STRIDE * stream

    def _epoch_sampler(self, dataset, stream: int) -> EpochSampler:
        """One sampler per stream with its own seed (`stream` 0 labeled, 1 unlabeled), on one
        device and under DDP alike.

        Lightning would give every loader under DDP a DistributedSampler with the same seed:
        with the labeled list repeated to the unlabeled length, labeled image j mod n would then
        always be drawn with unlabeled image j. Independent seeds draw the two streams
        independently.

        The loaders are built after a checkpoint is restored: a run resumed in the middle of an
        epoch tells the sampler how many batches of it are done, and the rest of that epoch is
        drawn afresh (data/sampling.py)."""
        trainer = self.trainer
        ranks, rank, epoch, done = 1, 0, -1, 0
        if trainer is not None:
            ranks, rank = trainer.world_size, trainer.global_rank
            epoch = trainer.current_epoch
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return EpochSampler(dataset, self._seed(stream), ranks, rank, epoch, done)

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
        # its own generator for the workers' base seed: validating leaves the process's
        # random generators where training left them (a resumed run validates again)
        generator=torch.Generator().manual_seed(0),
    )


class ValidationData(L.LightningDataModule):
    """The validation set alone (eval.py), loaded as training validation loads it."""

    def __init__(self, val_set, num_workers: int = 0):
        super().__init__()
        self.val_set = val_set
        self.num_workers = num_workers

    def val_dataloader(self) -> DataLoader:
        return val_loader(self.val_set, self.trainer, self.num_workers)
