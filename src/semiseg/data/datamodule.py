"""The LightningDataModule: a labeled stream and, for semi-supervised methods, a paired
unlabeled stream (weak view, strong views, ignore mask, CutMix boxes, and the "mix" views).

An epoch is one pass over the unlabeled list; the labeled list is repeated to that length, as the
reference code does, so every method sees the same number of steps per epoch.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from semiseg.data import toy
from semiseg.data.datasets import LabeledDataset, UnlabeledDataset, ValDataset
from semiseg.data.splits import SplitError, load_split


def load_class_names(classes: list[str] | None, classes_file: str | None) -> list[str]:
    """Class names from the config list, else from a file with one name per line."""
    if classes:
        return [str(c) for c in classes]
    if not classes_file:
        raise SplitError("dataset.classes and dataset.classes_file are both empty: set one")
    path = Path(classes_file)
    if not path.is_file():
        raise SplitError(
            f"dataset.classes_file {path} does not exist: give a text file with one class "
            "name per line (the line count is the number of classes)"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise SplitError(f"{path} names {len(names)} class(es): a segmentation task needs >= 2")
    return names


class SemiSegDataModule(L.LightningDataModule):
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
        self.files = None

    def prepare_data(self) -> None:
        if self.generate_toy:
            toy.ensure(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.files is not None:
            return
        if not self.root.is_dir():
            raise SplitError(f"dataset.root {self.root} does not exist: point it at the dataset")
        self.files = load_split(self.root, self.splits_dir, self.split)
        self.files.check_exists(self.root)
        if self.unlabeled and not self.files.unlabeled:
            raise SplitError(
                f"split '{self.split}' in {self.splits_dir} has no unlabeled.txt (or it is empty): "
                "semi-supervised methods need unlabeled images; use method=supervised"
            )
        # The epoch length is the unlabeled count even for the supervised baseline (which never
        # loads an unlabeled image), so methods compare at equal steps.
        epoch_length = max(len(self.files.labeled), len(self.files.unlabeled))
        self.labeled_set = LabeledDataset(
            self.root, self.files.labeled, self.crop_size, length=epoch_length
        )
        self.unlabeled_set = None
        if self.unlabeled:
            self.unlabeled_set = UnlabeledDataset(
                self.root, self.files.unlabeled, self.crop_size, self.num_strong, self.mix
            )
        self.val_set = ValDataset(self.root, self.files.val)

    def _train_loader(self, dataset) -> DataLoader:
        # drop_last: BatchNorm after ASPP image pooling fails on a batch of one.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        labeled = self._train_loader(self.labeled_set)
        if self.unlabeled_set is None:
            return labeled
        return {"labeled": labeled, "unlabeled": self._train_loader(self.unlabeled_set)}

    def val_dataloader(self) -> DataLoader:
        # Whole images of different sizes: one per batch, as the papers evaluate.
        return DataLoader(
            self.val_set,
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
