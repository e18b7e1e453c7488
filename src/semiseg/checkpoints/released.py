"""Checkpoints written by the authors' public code, read as they are (eval, predict, export).

A file that is not a semiseg training checkpoint is one of:
- the public UniMatch V2 `unimatch_v2.py` / `fixmatch.py` file (`best.pth`, `latest.pth`): a dict
  with `model` (the student) and `model_ema` (the EMA teacher), beside `optimizer`, `epoch`,
  `previous_best(_ema)` and `best_epoch(_ema)`;
- the public remote-sensing `unimatch_v2.py` file: the same two entries (its bests are changed
  IoU and accuracy), the siamese DPT under the segmentation DPT's names (`model=siamese_dpt
  dataset=whu_cd`, or `levir_cd`);
- the public UniMatch V1 `unimatch.py` / `fixmatch.py` / `supervised.py` file: a dict with
  `model` only (DeepLabV3+ on ResNet-50/101 or Xception-65);
- a bare state dict (name -> tensor).
Keys may carry DistributedDataParallel's `module.` prefix (the public code saves the wrapped
model's state dict). The file says nothing about the network or the classes: `model=...` and
`dataset=...` on the command line do, and the file becomes an in-memory checkpoint of this
project's layout (`semiseg` entry, `state_dict` under the networks' prefixes) that the rest of
eval, predict and export reads like any other. The teacher is the default network where the file
has one (the released weights the public READMEs report), `eval.model=student` the student.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from semiseg.data.spec import load_class_names
from semiseg.errors import ConfigError

DDP_PREFIX = "module."
# The public files' entries: network name here -> the file's key.
PUBLIC_NETWORKS = {"student": "model", "teacher": "model_ema"}
# The networks' prefixes in the in-memory checkpoint (methods/released.py holds them there).
PREFIXES = {"student": "model", "teacher": "teacher"}
RELEASED_METHOD = "semiseg.methods.released.ReleasedNetworks"
HOW = (
    "a released checkpoint (the public UniMatch / UniMatch V2 best.pth, or a bare state dict) "
    "needs the network and the classes on the command line: model=deeplabv3plus "
    "model.encoder=resnet101 (or model=dpt model.encoder=dinov2_base) dataset=pascal"
)


def _is_state_dict(value) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())
    )


def released_networks(raw, path) -> dict[str, dict]:
    """The file's networks by name (student, teacher), their keys without `module.`."""
    if _is_state_dict(raw):
        found = {"student": raw}
    elif isinstance(raw, dict) and _is_state_dict(raw.get("model")):
        found = {
            name: raw[key] for name, key in PUBLIC_NETWORKS.items() if _is_state_dict(raw.get(key))
        }
    else:
        entries = (
            ", ".join(map(str, list(raw)[:6])) if isinstance(raw, dict) else type(raw).__name__
        )
        raise ConfigError(
            f"{path} is neither a semiseg checkpoint, nor a public UniMatch file (a dict with "
            f"'model' and, for V2, 'model_ema'), nor a bare state dict (it holds {entries}): "
            "give a .ckpt written by train.py or the authors' best.pth"
        )
    return {name: strip_ddp(state) for name, state in found.items()}


def strip_ddp(state: dict) -> dict:
    """DistributedDataParallel's `module.` prefix removed (all keys carry it, or none)."""
    if all(k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


# ------------------------------------------------------------------------ UniMatch V1 names
# The public model/semseg/deeplabv3plus.py names its ASPP branches b0..b4 (b4: a `gap`
# Sequential of pooling, conv, BN, ReLU) and its fuse block as one Sequential of six modules;
# models/deeplabv3plus.py keeps the branches in a list and builds fuse from two conv-BN-ReLU
# blocks. The backbones (the public ResNet with its deep stem, Xception-65) and `reduce`,
# `head.project`, `classifier` already have the public names.
V1_HEAD_NAMES = (
    ("head.b0.", "head.branches.0."),
    ("head.b1.", "head.branches.1."),
    ("head.b2.", "head.branches.2."),
    ("head.b3.", "head.branches.3."),
    ("head.b4.gap.1.", "head.pool.1.0."),  # the conv after the AdaptiveAvgPool2d
    ("head.b4.gap.2.", "head.pool.1.1."),  # its BatchNorm
    ("fuse.0.", "fuse.0.0."),
    ("fuse.1.", "fuse.0.1."),
    ("fuse.3.", "fuse.1.0."),
    ("fuse.4.", "fuse.1.1."),
)


def from_unimatch_v1_names(state: dict) -> dict:
    """A public UniMatch V1 DeepLabV3+ state dict under models/deeplabv3plus.py's names; other
    keys (and a state dict already in these names) unchanged."""
    if not any(k.startswith("head.b0.") for k in state):
        return state
    renamed = {}
    for key, value in state.items():
        for public, ours in V1_HEAD_NAMES:
            if key.startswith(public):
                key = ours + key[len(public) :]
                break
        renamed[key] = value
    return renamed


RENAMES = {"DeepLabV3Plus": from_unimatch_v1_names}  # model class -> its public layout's map


# ------------------------------------------------------------------------ the checkpoint


def released_checkpoint(raw, path, cfg) -> dict:
    """The released file `raw` (read from `path`) as an in-memory semiseg checkpoint for the
    model and dataset of `cfg` (the command line)."""
    model_cfg, dataset_cfg = cfg.get("model"), cfg.get("dataset")
    if not model_cfg or not dataset_cfg:
        missing = " and ".join(k for k in ("model", "dataset") if not cfg.get(k))
        raise ConfigError(
            f"{path} is not a semiseg training checkpoint; {HOW} (no {missing} given)"
        )
    networks = released_networks(raw, path)
    model = OmegaConf.to_container(model_cfg, resolve=True)
    # The training crop check (a multiple of 14 for model=dpt) is for training; evaluation takes
    # any size (the public evaluate() resizes).
    if "crop_size" in model:
        model["crop_size"] = None
    rename = RENAMES.get(str(model["_target_"]).rsplit(".", 1)[-1], lambda s: s)
    dataset = OmegaConf.to_container(dataset_cfg, resolve=True)
    class_names = load_class_names(dataset.get("classes"), dataset.get("classes_file"))
    state_dict = {
        f"{PREFIXES[name]}.{key}": value
        for name, state in networks.items()
        for key, value in rename(state).items()
    }
    default = "teacher" if "teacher" in networks else "student"
    return {
        "state_dict": state_dict,
        "semiseg": {
            "config": {
                "model": model,
                "dataset": dataset,
                "method": {
                    "_target_": RELEASED_METHOD,
                    "name": "released",
                    "with_teacher": "teacher" in networks,
                    "default_network": default,
                },
                "optim": {},
                "eval": {},
            },
            "class_names": class_names,
            "networks": {name: PREFIXES[name] for name in networks},
            "eval_network": default,
            "released": str(Path(str(path))),
        },
    }
