"""DPT on a DINOv2 ViT: the segmentation network of UniMatch V2 (model/semseg/dpt.py there).

`model.encoder`: dinov2_small, dinov2_base, dinov2_large, dinov2_giant (Meta's released sizes) or
dinov2_tiny (this project's own, 192 wide, scratch only: the toy and CPU tests).

Four blocks of the ViT are tapped (S/B: 2, 5, 8, 11; L: 4, 11, 17, 23; g: 9, 19, 29, 39); their
normed patch tokens are projected (1x1) to `out_channels`, resized to strides 14/4, 14/2, 14, 28
(transposed convolutions x4 and x2, identity, a stride-2 3x3 convolution), reduced by 3x3
convolutions to `features` channels and fused coarse to fine by RefineNet blocks (two residual
units of ReLU-3x3 convolutions, bilinear x2 upsampling with align_corners, 1x1 convolution); a
3x3 convolution, ReLU and a 1x1 classifier give logits at stride 14/8, resized (bilinear,
align_corners) to the input. No BatchNorm anywhere.

Module names follow the public code (`backbone.*`, `head.projects`, `head.resize_layers`,
`head.scratch.layer<k>_rn`, `head.scratch.refinenet<k>.{resConfUnit1, resConfUnit2, out_conv}`,
`head.scratch.output_conv`), so a public UniMatch V2 checkpoint's state dict loads as it is.

Input size: any. The ViT takes multiples of 14; another size is resized (bilinear,
align_corners) to the nearest multiples, int(h / 14 + 0.5) * 14, and the logits resized back:
the public evaluate() with `multiplier=14`, here for every caller (validation, eval.py,
predict.py, sliding windows cut at the border). Training crops should be multiples of 14 (the
public code asserts it; `dataset.crop_size` is checked when the model is built).

Perturbed forwards:
- `forward(x, complementary_dropout=True)` (UniMatch V2): x holds two halves, the first strong
  views and the second; one channel mask m ~ Bernoulli(0.5) * 2 per (image, channel) multiplies
  every tapped feature of the first half and 2 - m that of the second, and a random half of the
  pairs keep their features whole (mask 1). The masks are drawn as the public code draws them,
  from the CPU generator (`complementary_masks`).
- `forward(x, feature_perturbation=True)` (UniMatch V1): (logits, logits_fp), the head run once
  on the features and on a copy with channel dropout (Dropout2d(fp_dropout) per image and
  channel, on every tapped feature), as DeepLabV3Plus does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg.errors import ConfigError
from semiseg.models.dinov2 import PATCH, SIZES, DINOv2
from semiseg.models.encoders import DINOV2_FILES, load_pretrained, pretrained_file

# Per size: the blocks tapped, the head's width and the projections' widths (the public
# model_configs and intermediate_layer_idx).
TAPS = {
    "tiny": (2, 5, 8, 11),
    "small": (2, 5, 8, 11),
    "base": (2, 5, 8, 11),
    "large": (4, 11, 17, 23),
    "giant": (9, 19, 29, 39),
}
HEADS = {
    "tiny": (32, (24, 48, 96, 192)),  # this project's own: small's widths halved
    "small": (64, (48, 96, 192, 384)),
    "base": (128, (96, 192, 384, 768)),
    "large": (256, (256, 512, 1024, 1024)),
    "giant": (384, (1536, 1536, 1536, 1536)),
}
ENCODER_PREFIX = "dinov2_"


def encoder_size(encoder: str) -> str:
    size = str(encoder).removeprefix(ENCODER_PREFIX)
    if not str(encoder).startswith(ENCODER_PREFIX) or size not in SIZES:
        raise ConfigError(
            f"model.encoder={encoder}: model=dpt takes "
            + ", ".join(ENCODER_PREFIX + s for s in SIZES)
        )
    return size


def nearest_multiple(size: int, multiple: int = PATCH) -> int:
    """The public evaluate()'s rounding: int(size / multiple + 0.5) * multiple (at least one)."""
    return max(multiple, int(size / multiple + 0.5) * multiple)


def resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def complementary_masks(pairs: int, channels: int, keep_ratio: float = 0.5) -> Tensor:
    """(2 * pairs, channels) masks of Complementary Dropout, on the CPU, drawn as the public
    code draws them (so a seeded run gives its masks): m = Binomial(1, 0.5) * 2 for the first
    half, 2 - m for the second; int(pairs * keep_ratio) pairs chosen by randperm get 1."""
    first = torch.binomial(torch.ones(pairs, channels), torch.full((pairs, channels), 0.5)) * 2.0
    second = 2.0 - first
    kept = torch.randperm(pairs)[: int(pairs * keep_ratio)]
    first[kept, :] = 1.0
    second[kept, :] = 1.0
    return torch.cat((first, second))


class ResidualUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convolutions with biases."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """RefineNet fusion: (coarse [+ unit1(skip)]) -> unit2 -> bilinear resize (to `size`, or
    x2) -> 1x1 convolution."""

    def __init__(self, features: int):
        super().__init__()
        self.resConfUnit1 = ResidualUnit(features)
        self.resConfUnit2 = ResidualUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, coarse: Tensor, skip: Tensor | None = None, size=None) -> Tensor:
        x = coarse if skip is None else coarse + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = resize(x, size)
        return self.out_conv(x)


class DPTHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, features: int, out_channels):
        super().__init__()
        c1, c2, c3, c4 = out_channels
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c1, c1, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c2, c2, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c4, c4, kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for k, c in enumerate((c1, c2, c3, c4), 1):
            setattr(scratch, f"layer{k}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for k in range(1, 5):
            setattr(scratch, f"refinenet{k}", FusionBlock(features))
        scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(features, num_classes, 1),
        )
        # The coarsest fusion has no skip input: its first unit never runs (the public code
        # needs DDP's find_unused_parameters for it). Kept for the public checkpoints' keys,
        # frozen so that it is no unused trainable weight.
        scratch.refinenet4.resConfUnit1.requires_grad_(False)
        self.scratch = scratch

    def forward(self, tokens: list[Tensor], rows: int, cols: int) -> Tensor:
        """Logits at stride 14/8 of the tapped tokens [(N, rows * cols, D)] x 4."""
        s = self.scratch
        maps = []
        for k, x in enumerate(tokens):
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], rows, cols)
            maps.append(self.resize_layers[k](self.projects[k](x)))
        l1, l2, l3, l4 = (getattr(s, f"layer{k}_rn")(m) for k, m in enumerate(maps, 1))
        path = s.refinenet4(l4, size=l3.shape[-2:])
        path = s.refinenet3(path, l3, size=l2.shape[-2:])
        path = s.refinenet2(path, l2, size=l1.shape[-2:])
        path = s.refinenet1(path, l1)
        return s.output_conv(path)


class DPT(nn.Module):
    """DINOv2 + DPT head (module docstring). `forward(x)` returns logits at the input size."""

    inputs = ("rgb",)
    decoder_features = False  # no CSS representation head
    complementary_dropout = True  # forward(x, complementary_dropout=True): UniMatch V2

    def __init__(
        self,
        num_classes: int,
        encoder: str = "dinov2_small",
        pretrained: str | None = "imagenet",
        pretrained_dir: str = "pretrained",
        freeze_backbone: bool = False,
        checkpointing: bool = False,
        crop_size: int | None = None,
        fp_dropout: float = 0.5,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        layers=None,
        features: int | None = None,
        out_channels=None,
        representation_dim: int | None = None,
    ):
        super().__init__()
        size = encoder_size(encoder)
        if representation_dim:
            raise ConfigError("model=dpt has no representation head (method=css needs DeepLabV3+)")
        if crop_size is not None and int(crop_size) % PATCH:
            low = max(PATCH, int(crop_size) // PATCH * PATCH)
            raise ConfigError(
                f"dataset.crop_size={crop_size} is not a multiple of the ViT's patch size "
                f"{PATCH}: use {low} or {low + PATCH}"
            )
        self.encoder = encoder
        self.fp_dropout = fp_dropout
        self.backbone = DINOv2(size, embed_dim, depth, num_heads, checkpointing)
        self.layers = tuple(layers or TAPS[size])
        if len(self.layers) != 4:
            raise ConfigError(f"model.layers={list(self.layers)}: the DPT head takes 4 blocks")
        default_features, default_channels = HEADS[size]
        out_channels = tuple(out_channels or default_channels)
        if len(out_channels) != 4:
            raise ConfigError(f"model.out_channels={list(out_channels)}: 4 widths")
        self.head = DPTHead(
            num_classes, self.backbone.embed_dim, features or default_features, out_channels
        )
        # imagenet: <pretrained_dir>/dinov2_<size>.pth (Meta's file, the public name)
        weights = pretrained_file(encoder, pretrained, pretrained_dir)
        if weights is not None:
            self.load_backbone(weights)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)

    def load_backbone(self, path: Path) -> None:
        """Meta's DINOv2 state dict into every backbone tensor: any missing, unexpected or
        mis-shaped tensor is one line naming the file and the fix."""
        try:
            load_pretrained(self.backbone, path)
        except ConfigError as err:
            released = DINOV2_FILES.get(self.encoder, "")
            raise ConfigError(
                f"{err}; model.encoder={self.encoder} loads Meta's {released} (the public "
                f"{self.encoder}.pth): give the file of that size (model.pretrained=PATH) or "
                "another model.encoder, keep model.embed_dim/depth/num_heads null, or train from "
                "random weights with model.pretrained=scratch"
            ) from None

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: Tensor, feature_perturbation: bool = False, complementary_dropout: bool = False
    ):
        h, w = x.shape[-2:]
        if torch.compiler.is_exporting():  # export.py: one graph for every height and width
            return self._exported_forward(x)
        size = (nearest_multiple(h), nearest_multiple(w))
        if size != (h, w):  # the public evaluate(): to multiples of 14 and back
            out = self.forward(resize(x, size), feature_perturbation, complementary_dropout)
            if isinstance(out, tuple):
                return tuple(resize(o, (h, w)) for o in out)
            return resize(out, (h, w))
        if feature_perturbation and complementary_dropout:
            raise ValueError("choose feature_perturbation or complementary_dropout, not both")
        tokens = self.encode(x)
        if complementary_dropout:
            n = x.shape[0]
            if n % 2:
                raise ValueError(f"complementary dropout pairs two halves: batch {n} is odd")
            masks = complementary_masks(n // 2, tokens[0].shape[-1]).to(tokens[0])
            tokens = [t * masks.unsqueeze(1) for t in tokens]
        if feature_perturbation:
            drop = [
                t * F.dropout(t.new_ones(t.shape[0], 1, t.shape[-1]), self.fp_dropout, True)
                for t in tokens
            ]
            both = self.decode([torch.cat((t, d)) for t, d in zip(tokens, drop, strict=True)], h, w)
            logits, logits_fp = both.chunk(2)
            return logits, logits_fp
        return self.decode(tokens, h, w)

    def _exported_forward(self, x: Tensor) -> Tensor:
        """The inference forward with symbolic sizes: nearest_multiple in integer arithmetic
        (int(h / 14 + 0.5) * 14 == (h + 7) // 14 * 14), and always resized in and out (a
        bilinear align_corners resize to the same size is the identity)."""
        h, w = x.shape[-2:]
        rows = torch.sym_max(1, (h + PATCH // 2) // PATCH)
        cols = torch.sym_max(1, (w + PATCH // 2) // PATCH)
        tokens = self.encode(resize(x, (rows * PATCH, cols * PATCH)))
        return resize(self.decode(tokens, rows * PATCH, cols * PATCH), (h, w))

    def encode(self, x: Tensor) -> list[Tensor]:
        """The tapped blocks' normed patch tokens (models/change.py: of a pair's difference)."""
        return self.backbone.intermediate(x, self.layers)

    def decode(self, tokens: list[Tensor], h: int, w: int) -> Tensor:
        return resize(self.head(tokens, h // PATCH, w // PATCH), (h, w))

    # ------------------------------------------------------------------ optimiser groups
    def backbone_parameters(self):
        """The ViT's trainable parameters (none with freeze_backbone, the public lock_backbone)."""
        return (p for p in self.backbone.parameters() if p.requires_grad)

    def head_parameters(self):
        return (p for p in self.head.parameters() if p.requires_grad)
