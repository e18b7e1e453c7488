"""A training checkpoint read for inference (eval, predict, export, op damage): the file, checked,
and the network it validated, with its weights, on the chosen device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from semiseg.checkpoints.io import why_unreadable
from semiseg.errors import ConfigError


def load_checkpoint(path: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path {path} does not exist: give a .ckpt written by train.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a checkpoint, or one carrying code: never run it
        raise ConfigError(
            f"ckpt_path {path} cannot be read as a checkpoint: {why_unreadable(err)}"
        ) from None
    if "semiseg" not in checkpoint or not checkpoint["semiseg"].get("config"):
        raise ConfigError(f"{path} is not a semiseg training checkpoint (no 'semiseg' entry)")
    return checkpoint


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
    model.load_state_dict(weights)
    return model


def inference_device(choice: str) -> torch.device:
    """`device: auto` is the GPU when there is one, else the CPU; any other value is torch's name."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
