"""OmegaConf resolvers the dataset configs use; registered when `semiseg.data` is imported.

`${semiseg.split_crop:321}` in a dataset config is the crop size for the chosen split: the entry
of `split_crop_size` for that split (by count, alias or folder name), else the default given.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from semiseg.data.splits import Split


def split_crop(default, *, _parent_, _root_):
    table = _parent_.get("split_crop_size") or {}
    split = OmegaConf.select(_root_, "split", default=None)  # eval.yaml has no split
    if split is None or not table:
        return default
    aliases = _parent_.get("split_aliases") or {}
    names = set(Split.parse(split, aliases).candidates)
    for key, crop in table.items():
        if names & set(Split.parse(key, aliases).candidates):
            return int(crop)
    return default


def register() -> None:
    OmegaConf.register_new_resolver("semiseg.split_crop", split_crop, replace=True)
