"""Encoders by name, and loading local backbone weights.

`build_encoder` returns a module whose forward gives `[low, high]`: the stride-4 feature that the
DeepLabV3+ decoder fuses and the last feature (stride 16 with output_stride=16) that feeds ASPP.
Its `channels` attribute is `(low_ch, high_ch)`.

Names are timm model names by default (`resnet101`); `smp:<name>` selects a
segmentation-models-pytorch encoder instead; `xception65` (or `xception`) is the UniMatch
reference's own Xception-65 (xception.py), not timm's aligned Xception of that name. Everything
is built with random init; `load_init` then reads the weights `model.pretrained` names.

`model.pretrained` chooses the initialisation (`resolve_init` turns it into a file):
- `imagenet`: the ImageNet file of the public UniMatch code, `<pretrained_dir>/resnet50.pth`,
  `resnet101.pth` (deep stem) or `xception.pth`, as its model code loads it (other encoders:
  `<pretrained_dir>/<encoder>.pth`); without it, the encoder's ImageNet weights that timm or
  torchvision publish, from their hub caches (hub_weights.py; downloaded only with
  HF_HUB_OFFLINE=0), with one line saying which and what maps;
- `scratch`: random initialisation, only when asked for (the papers never report it);
- a path: any local state dict in the encoder's layout.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from semiseg.errors import ConfigError, one_line
from semiseg.models import hub_weights, xception

SMP_PREFIX = "smp:"
# The public code's file names where they differ from the encoder's name.
IMAGENET_FILES = {
    "xception65": "xception.pth",
    "xception": "xception.pth",
    "resnet101_v1c": "resnet101_v1c-e67eebb6.pth",  # model=deeplabv2: open-mmlab's file
}
WEIGHTS_HELP = (
    "put the ImageNet file published with the UniMatch code there (docs/recipes.md: 'Pretrained "
    "backbones'), give another file with model.pretrained=PATH, or train from random weights "
    "with model.pretrained=scratch"
)


# Meta's DINOv2 files (model=dpt), renamed as the public UniMatch V2 code names them.
DINOV2_FILES = {
    "dinov2_small": "dinov2_vits14_pretrain.pth",
    "dinov2_base": "dinov2_vitb14_pretrain.pth",
    "dinov2_large": "dinov2_vitl14_pretrain.pth",
    "dinov2_giant": "dinov2_vitg14_pretrain.pth",
}


def weights_help(encoder: str) -> str:
    """How to provide the weights `model.pretrained=imagenet` asks for."""
    if encoder in DINOV2_FILES:
        return (
            f"put Meta's DINOv2 file {DINOV2_FILES[encoder]} there as {encoder}.pth (the "
            "UniMatch V2 README's 'Pretrained backbones'), give another file with "
            "model.pretrained=PATH, or train from random weights with model.pretrained=scratch"
        )
    if encoder.startswith("dinov2_"):
        return f"Meta released no weights for {encoder}: train it with model.pretrained=scratch"
    if encoder.startswith("mit_") or encoder == "resnet101_v1c":
        return (
            f"put the ImageNet file {imagenet_file(encoder)} of the DAFormer/FST code's "
            "pretrained/ folder there (docs/recipes.md: 'Pretrained backbones'), give another "
            "file with model.pretrained=PATH, or use model.pretrained=scratch"
        )
    return WEIGHTS_HELP


def imagenet_file(encoder: str) -> str:
    """The file name of `encoder`'s ImageNet weights in the public code's `pretrained/` folder."""
    name = encoder.removeprefix(SMP_PREFIX)
    return IMAGENET_FILES.get(name, f"{name}.pth")


@dataclass(frozen=True)
class Init:
    """What `model.pretrained` resolves to: scratch, a file, or published weights from a hub
    cache (`hub`, see hub_weights.py)."""

    kind: str  # scratch | imagenet | file
    path: Path | None = None
    hub: hub_weights.HubWeights | None = None


def resolve_init(encoder: str, pretrained, pretrained_dir="pretrained", deep_stem=True) -> Init:
    """The initialisation `model.pretrained` asks for, its file checked to exist.

    `imagenet`: the public file in `pretrained_dir` when it is there; else the encoder's weights
    published by timm or torchvision from their hub caches (downloaded there only when the hubs
    may be reached, see hub_weights.online). Called before any data is read, so a missing file
    costs the user nothing.
    """
    if pretrained is None or str(pretrained) == "scratch":
        return Init("scratch")
    if str(pretrained) != "imagenet":
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"model.pretrained: no such file: {path}; {weights_help(encoder)}")
        return Init("file", path)
    path = Path(pretrained_dir) / imagenet_file(encoder)
    if path.is_file():
        return Init("imagenet", path)
    published = hub_weights.candidates(encoder, deep_stem)
    for weights in published:
        file = hub_weights.cached_file(weights)
        if file is not None:
            return Init("imagenet", file, weights)
    kind = "DINOv2" if encoder.startswith("dinov2_") else "ImageNet"
    where = f"no {kind} weights for {encoder} at {path} (model.pretrained_dir={pretrained_dir})"
    if not published:
        raise ConfigError(f"model.pretrained=imagenet: {where}; {weights_help(encoder)}")
    first = published[0]
    if hub_weights.online():
        try:
            return Init("imagenet", hub_weights.download(first), first)
        except Exception as err:
            raise ConfigError(
                f"model.pretrained=imagenet: {where}, and downloading {first.label} failed "
                f"({' '.join(one_line(err).split())}); put the ImageNet file published with the UniMatch code at "
                f"{path}, or copy {first.label} into "
                f"{hub_weights.hf_cache() if first.hub == 'timm' else hub_weights.torch_cache()}"
            ) from None
    raise ConfigError(
        f"model.pretrained=imagenet: {where} nor in the hub caches ({hub_weights.hf_cache()}, "
        f"{hub_weights.torch_cache()}); put the ImageNet file published with the UniMatch code "
        f"there (docs/recipes.md: 'Pretrained backbones'), or fill the hub cache with {first.label} "
        "(once online: HF_HUB_OFFLINE=0 python train.py ... downloads it), give another file "
        "with model.pretrained=PATH, or train from random weights with model.pretrained=scratch"
    )


def pretrained_file(encoder: str, pretrained, pretrained_dir="pretrained", deep_stem=True):
    """The weights file `model.pretrained` asks for (None: random init), checked to exist."""
    return resolve_init(encoder, pretrained, pretrained_dir, deep_stem).path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_init(encoder: str, pretrained, pretrained_dir="pretrained", deep_stem=True) -> dict:
    """What results.json records of the initialisation: the file and its SHA-256, or scratch;
    for published weights also which (`weights`, `hub`), the public file the paper recipes use
    (`paper_file`) and, where the layouts differ, the modules left random (`random`)."""
    init = resolve_init(encoder, pretrained, pretrained_dir, deep_stem)
    if init.path is None:
        return {"backbone": "scratch"}
    record = {"backbone": init.kind, "file": str(init.path), "sha256": _sha256(init.path)}
    if init.hub is None:
        return record
    with torch.device("meta"):  # the layout only: nothing allocated, no weights read
        skeleton = build_encoder(encoder, deep_stem=deep_stem)
    loaded, left = hub_weights.unmatched(init.hub, skeleton)
    record.update(
        weights=init.hub.label,
        hub=init.hub.hub,
        paper_file=str(Path(pretrained_dir) / imagenet_file(encoder)),
        tensors_loaded=loaded,
        random=hub_weights.modules_of(left),
    )
    return record


def init_line(encoder: str, init: dict) -> str:
    """The one line train.py prints about the backbone's initialisation (`init`: describe_init)."""
    if "file" not in init:
        return f"backbone {encoder}: scratch (random initialisation)"
    if "weights" not in init:
        return f"backbone {encoder}: {init['backbone']} (weights from {init['file']})"
    line = f"backbone {encoder}: imagenet, {init['weights']} from the {init['hub']} cache"
    if init["random"]:
        shown = ", ".join(init["random"][:8]) + (", ..." if len(init["random"]) > 8 else "")
        line += f": {init['tensors_loaded']} tensors loaded, {shown} left random"
        if any(m.startswith("conv1.") for m in init["random"]):
            line += (
                " (UniMatch's deep stem, three 3x3 convs 64-64-128, is not their 7x7 conv; "
                "model.deep_stem=false maps every tensor)"
            )
    else:
        line += ": every tensor loaded"
    return (
        f"{line}; the paper recipes use the public UniMatch file at {init['paper_file']} "
        "(other ImageNet weights: figures may differ)"
    )


def load_init(
    encoder: nn.Module, name: str, pretrained, pretrained_dir="pretrained", deep_stem=True
) -> Init:
    """Initialise `encoder` (built by build_encoder(name)) as `model.pretrained` asks."""
    init = resolve_init(name, pretrained, pretrained_dir, deep_stem)
    if init.hub is not None:
        try:
            loaded, _ = hub_weights.load(encoder, init.hub, init.path)
        except Exception as err:
            raise ConfigError(
                f"model.pretrained=imagenet: cannot read {init.hub.label} from {init.path}: "
                f"{' '.join(one_line(err).split())}"
            ) from None
        if not loaded:
            raise ConfigError(f"model.pretrained=imagenet: {init.path} maps no tensor of {name}")
    elif init.path is not None:
        load_pretrained(encoder, init.path)
    return init


# U2PL's multi-grid (iMAS's Cityscapes ResNet, imas/models/resnet.py `_make_layer`): the 3x3
# convolutions of the last stage's three blocks dilated 2, 2, 4 times what they had.
MULTI_GRID = (2, 2, 4)


def apply_multi_grid(model: nn.Module, name: str) -> None:
    """Multiply the dilations of the last stage's 3x3 convolutions by MULTI_GRID, in place.

    timm's ResNet dilates block 0 of a stage by the previous stage's dilation and the others by
    the stage's own, as torchvision and U2PL's ResNet before their grid factor: times the grid
    they are U2PL's dilations (output stride 16: 2, 4, 8; output stride 8: 4, 8, 16)."""
    blocks = list(getattr(model, "layer4", []))
    if len(blocks) != len(MULTI_GRID) or not all(hasattr(b, "conv3") for b in blocks):
        raise ConfigError(
            f"model.multi_grid=true needs a bottleneck ResNet with 3 blocks in its last stage "
            f"(resnet50, resnet101), not encoder {name}; set model.multi_grid=false"
        )
    for block, grid in zip(blocks, MULTI_GRID, strict=True):
        dilation = block.conv2.dilation[0] * grid
        block.conv2.dilation = (dilation, dilation)
        block.conv2.padding = (dilation, dilation)  # 3x3: the padding keeps the size


def build_encoder(
    name: str,
    output_stride: int = 16,
    deep_stem: bool = True,
    multi_grid: bool = False,
    stage3: bool = False,
    stem_pool_ceil: bool = False,
) -> nn.Module:
    """Build the encoder `name` with random weights.

    deep_stem: for timm ResNets, the papers' stem (three 3x3 convs, widths 64-64-128); its
    parameter names match the public ImageNet checkpoints of the reference code. It is ignored
    for other models and for `smp:` encoders, which keep their own stem.
    multi_grid: U2PL's multi-grid dilations of the last stage (`apply_multi_grid`).
    stem_pool_ceil: the stem's 3x3 max-pool (stride 2, padding 1) in ceil mode, as U2PL's
    resnet.py (and iMAS's, AugSeg's, FST's copies): an even stem output of size s gives s / 2 + 1
    rows where floor mode gives s / 2 (a 512 crop: 129 at stride 4, not 128).
    stage3: a timm ResNet also returns the third stage's feature, in the middle
    (`[low, stage3, high]`; its width in `stage3_channels`): the input of U2PL's auxiliary head.
    """
    is_resnet = timm.is_model(name) and name.split(".")[0] in timm.list_models(module="resnet")
    if (multi_grid or stage3 or stem_pool_ceil) and not is_resnet:
        key = "model.multi_grid" if multi_grid else "model.aux_head"
        key = "model.stem_pool_ceil" if stem_pool_ceil and not multi_grid else key
        raise ConfigError(f"{key}=true needs a timm ResNet encoder, not {name}; set {key}=false")
    if name in xception.NAMES:
        return xception.Xception65(output_stride)
    if name.startswith(SMP_PREFIX):
        return SmpEncoder(name[len(SMP_PREFIX) :], output_stride)
    if not timm.is_model(name):
        raise ValueError(
            f"unknown encoder '{name}': use a timm model name (e.g. resnet18, resnet50, "
            f"resnet101) or '{SMP_PREFIX}<name>' for a segmentation-models-pytorch encoder"
        )
    kwargs = dict(pretrained=False, features_only=True, output_stride=output_stride)
    if name.split(".")[0] in timm.list_models(module="resnet"):
        if deep_stem:
            kwargs.update(stem_type="deep", stem_width=64)
        # ResNet features: 0 stem (stride 2), 1 layer1 (stride 4), ..., 4 layer4.
        model = timm.create_model(name, out_indices=(1, 3, 4) if stage3 else (1, 4), **kwargs)
        if multi_grid:
            apply_multi_grid(model, name)
        if stem_pool_ceil:
            model.maxpool.ceil_mode = True
    else:
        # Other families number their features differently: find the stride-4 one.
        info = timm.create_model(name, **kwargs).feature_info
        reductions, indices = info.reduction(), info.out_indices
        if 4 not in reductions:
            raise ValueError(f"encoder '{name}' has no stride-4 feature for the decoder")
        low = indices[reductions.index(4)]
        model = timm.create_model(name, out_indices=(low, indices[-1]), **kwargs)
    # The timm feature model itself is the encoder, so its parameter names stay those of
    # ImageNet checkpoints (conv1.0, bn1, layer1, ...).
    channels = model.feature_info.channels()
    model.channels = (channels[0], channels[-1])
    if stage3:
        model.stage3_channels = channels[1]
    return model


class SmpEncoder(nn.Module):
    """A segmentation-models-pytorch encoder, reduced to its stride-4 and last features."""

    def __init__(self, name: str, output_stride: int = 16):
        super().__init__()
        try:
            self.body = smp.encoders.get_encoder(name, weights=None, output_stride=output_stride)
        except KeyError:
            raise ValueError(
                f"unknown smp encoder '{name}' (e.g. {SMP_PREFIX}resnet50, "
                f"{SMP_PREFIX}efficientnet-b0)"
            ) from None
        # smp returns one feature per stride 1, 2, 4, ..., 32: index 2 is stride 4.
        self.channels = (self.body.out_channels[2], self.body.out_channels[-1])

    def forward(self, x):
        features = self.body(x)
        return [features[2], features[-1]]


def _read_state_dict(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"model.pretrained: cannot read weights from {path}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict):
        raise ConfigError(f"model.pretrained: {path} holds no state dict")
    state = {}
    for key, value in ckpt.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        # The ImageNet classifier has no place in a segmentation backbone.
        if not key.startswith("fc."):
            state[key] = value
    return state


def _some(keys, n=5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_pretrained(encoder: nn.Module, path) -> int:
    """Load local backbone weights into `encoder`, refusing any mismatch.

    The file may hold a plain state dict or one under `state_dict`/`model`; `module.` and
    `backbone.` prefixes are stripped and `fc.*` keys ignored, as are keys containing one of the
    encoder's `ignored_key_parts` if it has any. Missing or unexpected keys and shape mismatches
    raise one line naming the file and a few of the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no such file: {path}; {WEIGHTS_HELP}")
    state = _read_state_dict(path)
    # An smp encoder keeps its weights in `body`, under the checkpoint's own names.
    target = encoder.body if isinstance(encoder, SmpEncoder) else encoder
    # Bookkeeping entries an encoder's public file carries and its reference code skips.
    ignored = getattr(target, "ignored_key_parts", ())
    state = {k: v for k, v in state.items() if not any(part in k for part in ignored)}
    expected = target.state_dict()
    # BatchNorm's batch counter is not a weight; old checkpoints lack it.
    missing = {k for k in expected if k not in state and not k.endswith("num_batches_tracked")}
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise ConfigError(
            f"model.pretrained: {path} does not match the encoder: {len(missing)} missing "
            f"({_some(missing)}), {len(unexpected)} unexpected ({_some(unexpected)})"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong:
        raise ConfigError(
            f"model.pretrained: {path} has {len(wrong)} shape mismatches "
            f"(file vs encoder): {_some(wrong, 3)}"
        )
    target.load_state_dict(state, strict=False)
    return len(state)
