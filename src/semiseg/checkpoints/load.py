"""A checkpoint read for inference (eval, predict, export, op damage): the file, checked, and the
network it validated, with its weights, on the chosen device.

`ckpt_path` is a training checkpoint (.ckpt) or a released file of the authors' public code
(checkpoints/released.py), which needs `model=` and `dataset=` on the command line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn

from semiseg.checkpoints.io import why_unreadable
from semiseg.checkpoints.released import released_checkpoint
from semiseg.errors import ConfigError


def load_checkpoint(path: str, cfg=None) -> dict:
    """The checkpoint at `path`; a released file becomes one for `cfg.model` and `cfg.dataset`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path {path} does not exist: give a .ckpt written by train.py (or a released "
            "best.pth of the public code, with model=... dataset=...)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a checkpoint, or one carrying code: never run it
        raise ConfigError(
            f"ckpt_path {path} cannot be read as a checkpoint: {why_unreadable(err)}"
        ) from None
    if isinstance(checkpoint, dict) and "semiseg" in checkpoint:
        if not checkpoint["semiseg"].get("config"):
            raise ConfigError(f"{path} is a semiseg checkpoint without its config: train again")
        return checkpoint
    return released_checkpoint(checkpoint, path, cfg if cfg is not None else {})


def source_name(checkpoint: dict) -> str:
    """What the weights are, for messages: the released file, or the run's model."""
    state = checkpoint["semiseg"]
    return state.get("released") or "the checkpoint"


def check_weights(module: nn.Module, weights: dict, checkpoint: dict) -> None:
    """`weights` fit `module` exactly, else one line naming the first missing, unexpected and
    mis-shaped keys and the model options to check."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    model = checkpoint["semiseg"]["config"]["model"]
    built = f"{str(model['_target_']).rsplit('.', 1)[-1]} model.encoder={model.get('encoder')}"

    def first(keys, n=3):
        return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")

    raise ConfigError(
        f"{source_name(checkpoint)} does not fit {built} with "
        f"{len(checkpoint['semiseg']['class_names'])} classes: {len(missing)} missing "
        f"({first(missing)}), {len(unexpected)} unexpected ({first(unexpected)}), "
        f"{len(shapes)} of another shape (file vs model: {first(shapes, 2)}); give the model, "
        "encoder and dataset it was trained with"
    )


def model_from_checkpoint(checkpoint: dict, network: str | None = None) -> torch.nn.Module:
    """The network a training run validated (or `network`: student | teacher), with its weights.

    Checkpoints name their networks (`semiseg.networks`: name -> state_dict prefix); older ones
    have only the student, under `model.`.
    """
    state = checkpoint["semiseg"]
    trained = state["config"]
    networks = state.get("networks", {"student": "model"})
    name = network or state.get("eval_network", "student")
    if name not in networks:
        raise ConfigError(
            f"eval.model={name}: this checkpoint holds {', '.join(networks)} "
            f"(method {trained['method']['name']})"
        )
    model_cfg = dict(trained["model"], pretrained="scratch")  # the checkpoint holds the weights
    model = instantiate(model_cfg, num_classes=len(state["class_names"]))
    prefix = networks[name] + "."
    weights = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    check_weights(model, weights, checkpoint)
    model.load_state_dict(weights)
    return model


def inference_device(choice: str) -> torch.device:
    """`device: auto` is the GPU when there is one, else the CPU; any other value is torch's name."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
