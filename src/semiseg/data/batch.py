"""The training batch a method reads: typed fields instead of string keys.

The data loaders yield plain dicts of tensors (what DataLoader collates and Lightning moves to
the device); `TrainBatch.parse` turns them into these objects once, at the top of the training
step. Every dataset kind (natural images, ACDC slices, change-detection pairs) fills the same
fields, so a method never asks which kind it trains on.

Loader keys -> fields: the labeled stream's `image`/`mask`; the unlabeled stream's `weak`,
`ignore`, `gt`, `strong{k}`, `box{k}` and the CutMix partner's `mix_*` views (`Unlabeled.mix`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class Labeled:
    image: Tensor  # (N, C, H, W), normalised
    mask: Tensor  # (N, H, W) class indices, 255 not trained on

    def __len__(self) -> int:
        return self.image.shape[0]


@dataclass
class Unlabeled:
    """One augmentation of a batch of unlabeled images (or of its CutMix partner)."""

    weak: Tensor  # (N, C, H, W)
    ignore: Tensor  # (N, H, W): 255 on crop padding, else 0
    gt: Tensor | None = None  # (N, H, W) the mask where one exists, else 255: only logged
    strong1: Tensor | None = None
    strong2: Tensor | None = None
    box1: Tensor | None = None  # (N, H, W) bool, the CutMix box of strong view 1
    box2: Tensor | None = None
    mix: Unlabeled | None = None  # the partner's views (mix_partner same|shuffle)

    def __len__(self) -> int:
        return self.weak.shape[0]

    def strong(self, k: int) -> Tensor:
        view = getattr(self, f"strong{k}")
        if view is None:
            raise ValueError(f"the batch has no strong view {k}: the method asked for too few")
        return view

    def box(self, k: int) -> Tensor:
        return getattr(self, f"box{k}")

    def with_views(self, **views: Tensor) -> Unlabeled:
        """A copy with some views replaced (e.g. strong views made in the training step)."""
        return dataclasses.replace(self, **views)

    def flipped(self) -> Unlabeled:
        """The batch in reverse order (UniMatch V2's `flip(0)` partner), without boxes or gt."""
        return Unlabeled(
            weak=self.weak.flip(0),
            ignore=self.ignore.flip(0),
            strong1=None if self.strong1 is None else self.strong1.flip(0),
            strong2=None if self.strong2 is None else self.strong2.flip(0),
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Unlabeled:
        names = {f.name for f in dataclasses.fields(cls)} - {"mix"}
        unknown = set(raw) - names - {k for k in raw if k.startswith("mix_")}
        if unknown:
            raise KeyError(f"unlabeled batch: unknown keys {sorted(unknown)}")
        partner = {k[len("mix_") :]: v for k, v in raw.items() if k.startswith("mix_")}
        own = {k: v for k, v in raw.items() if k in names}
        return cls(**own, mix=cls(**partner) if partner else None)


@dataclass
class TrainBatch:
    labeled: Labeled
    unlabeled: Unlabeled | None = None  # None for methods that train on labeled images only

    @classmethod
    def parse(cls, raw: TrainBatch | dict[str, Any]) -> TrainBatch:
        """From what the loaders yield: {"labeled": {...}, "unlabeled": {...}}, or the labeled
        dict alone (supervised training has one loader). A TrainBatch is returned as it is."""
        if isinstance(raw, TrainBatch):
            return raw
        if "labeled" not in raw:
            return cls(Labeled(raw["image"], raw["mask"]))
        labeled = raw["labeled"]
        unlabeled = raw.get("unlabeled")
        return cls(
            Labeled(labeled["image"], labeled["mask"]),
            None if unlabeled is None else Unlabeled.from_dict(unlabeled),
        )

    def chunk(self, parts: int) -> list[TrainBatch]:
        """`parts` batches, each with 1/parts of every tensor's images (FST-W's present and
        future batches, drawn as one loader batch)."""
        return [_select(self, lambda t, i=i: t.chunk(parts)[i]) for i in range(parts)]


def _select(value, take):
    """`value` with `take` applied to every tensor inside (dataclasses walked field by field)."""
    if isinstance(value, Tensor):
        return take(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: _select(getattr(value, f.name), take) for f in dataclasses.fields(value)}
        )
    return value
