"""ImageNet weights that timm and torchvision publish, read from their usual hub caches.

`model.pretrained=imagenet` reads the public UniMatch file (`<pretrained_dir>/resnet101.pth`)
when it is there: the papers' recipes. Without it, an encoder that timm or torchvision publishes
ImageNet weights for takes those:

- timm: the Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
  `~/.cache/huggingface/hub`), `models--timm--<name>.<tag>/snapshots/<revision>/model.safetensors`;
- torchvision: `$TORCH_HOME/hub/checkpoints/` (else `~/.cache/torch/hub/checkpoints/`), the
  published file names (`resnet101-63fe2227.pth`).

They are downloaded into those caches only when the hubs may be reached: `HF_HUB_OFFLINE=0`
(train.py sets `HF_HUB_OFFLINE=1` unless the environment says otherwise, so by default nothing
is downloaded and only the caches are read).

What maps: the UniMatch ResNets have a deep stem (three 3x3 convs, widths 64-64-128, then 128
channels into layer1). timm's `resnet50s`/`resnet101s`/`resnet152s` (Gluon weights) have that
stem, so every tensor maps. torchvision's ResNets and timm's plain ones have one 7x7 conv of 64
channels: every tensor of the same name and shape is loaded, and the stem (`conv1.*`, `bn1`) and
layer1's first block's input convs (`layer1.0.conv1`, `layer1.0.downsample.0`) stay random;
`model.deep_stem=false` builds their 7x7 stem instead, where every tensor maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
OFF = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubWeights:
    """One published set of ImageNet weights for an encoder, and where its cache file is."""

    hub: str  # timm | torchvision
    name: str  # timm: the hub repository (timm/resnet101s.gluon_in1k); torchvision: resnet101
    arch: str  # the model the weights are for (timm: name.tag; torchvision: its model name)
    filename: str  # timm: the file in the repository; torchvision: the cache file name
    url: str | None = None  # torchvision's download address

    @property
    def label(self) -> str:
        if self.hub == "timm":
            return self.name
        return f"torchvision {self.name} ({self.filename})"


def online() -> bool:
    """Whether the hubs may be reached: not when HF_HUB_OFFLINE is set (train.py sets it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in OFF


def hf_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def torch_cache() -> Path:
    """torchvision's checkpoint cache, `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _timm_weights(arch: str) -> list[HubWeights]:
    """timm's default (or named) weights of `arch`, when they are on the Hugging Face hub."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # an unknown tag
        return []
    if cfg is None or not cfg.hf_hub_id:
        return []
    repo = cfg.hf_hub_id
    tag = repo.removeprefix("timm/")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else TIMM_FILES
    return [HubWeights("timm", repo, tag, f) for f in files]


def _torchvision_weights(arch: str) -> list[HubWeights]:
    from torchvision import models

    if arch not in models.list_models(module=models):
        return []
    weights = [w for w in models.get_model_weights(arch) if w.name.startswith("IMAGENET1K")]
    return [
        HubWeights("torchvision", arch, arch, w.url.rsplit("/", 1)[-1], url=w.url) for w in weights
    ]


def candidates(encoder: str, deep_stem: bool = True) -> list[HubWeights]:
    """The published weights that fit `encoder`, those whose layout matches fully first.

    None for the UniMatch Xception-65 (timm's `xception65` is another network) or for `smp:`
    encoders other than the ResNets, which are torchvision's.
    """
    from semiseg.models import xception
    from semiseg.models.encoders import SMP_PREFIX

    if encoder in xception.NAMES:
        return []
    if encoder.startswith(SMP_PREFIX):
        return _torchvision_weights(encoder.removeprefix(SMP_PREFIX))
    arch, _, tag = encoder.partition(".")
    if not timm.is_model(arch):
        return []
    if tag:  # a named timm weight set: that one only
        return _timm_weights(encoder)
    found = []
    is_resnet = arch in timm.list_models(module="resnet")
    if is_resnet and deep_stem and timm.is_model(arch + "s"):
        found += _timm_weights(arch + "s")  # the 64-64-128 deep stem: every tensor maps
    found += _timm_weights(arch)
    if is_resnet:
        found += _torchvision_weights(arch)
    return found


def cached_file(weights: HubWeights) -> Path | None:
    """The file of `weights` in its hub cache, or None."""
    if weights.hub == "torchvision":
        path = torch_cache() / weights.filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(weights.name, weights.filename, cache_dir=hf_cache())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def download(weights: HubWeights) -> Path:
    """Fetch `weights` into its hub cache (only called when `online()`)."""
    if weights.hub == "torchvision":
        path = torch_cache() / weights.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path), progress=True)
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(weights.name, weights.filename, cache_dir=hf_cache()))


def _layout(module: nn.Module) -> dict[str, tuple]:
    return {
        k: tuple(v.shape)
        for k, v in module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _target(encoder: nn.Module) -> nn.Module:
    """The module whose names the published weights use (an smp encoder keeps them in `body`)."""
    return getattr(encoder, "body", encoder)


def _source_model(weights: HubWeights, encoder: nn.Module, file: Path | None = None):
    """The published network in the encoder's layout: timm builds its feature model with the
    same feature indices (and loads `file` into it, timm's own key conversions included)."""
    if weights.hub == "timm":
        kwargs = dict(features_only=True, out_indices=tuple(encoder.feature_info.out_indices))
        if file is None:
            return timm.create_model(weights.arch, pretrained=False, **kwargs)
        overlay = dict(file=str(file), source=None)
        return timm.create_model(
            weights.arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    from torchvision import models

    model = models.get_model(weights.arch, weights=None)
    if file is not None:
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    model.fc = nn.Identity()  # the classifier has no place in a backbone
    return model


def unmatched(weights: HubWeights, encoder: nn.Module) -> tuple[int, list[str]]:
    """(tensors that map, the encoder's tensors that do not) between `weights` and `encoder`,
    from the layouts alone (built on the meta device: no memory, no weights read)."""
    with torch.device("meta"):
        source = _layout(_source_model(weights, encoder))
    target = _layout(_target(encoder))
    left = [k for k, shape in target.items() if source.get(k) != shape]
    return len(target) - len(left), left


def modules_of(keys: list[str]) -> list[str]:
    """Parameter names reduced to their modules (conv1.1.weight, conv1.1.bias -> conv1.1)."""
    return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))


def load(encoder: nn.Module, weights: HubWeights, file: Path) -> tuple[int, list[str]]:
    """Load every tensor of `file` whose name and shape the encoder has; return (loaded, the
    encoder's tensors left at their random initialisation)."""
    state = _source_model(weights, encoder, file).state_dict()
    target = _target(encoder)
    expected = target.state_dict()
    use = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    target.load_state_dict(use, strict=False)
    left = [k for k in _layout(target) if k not in use]
    return len(use) - sum(k.endswith("num_batches_tracked") for k in use), left
