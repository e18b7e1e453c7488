"""DeepLabV3+ as used by the UniMatch papers, with the feature-perturbation stream.

The head is written here rather than taken from smp: smp's DeepLabV3Plus refuses input sizes
not divisible by 16 and differs in its head, while evaluation feeds whole images (500x375).
"""

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.errors import ConfigError
from semiseg.models.encoders import build_encoder, load_init


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, one 3x3 per dilation, image pooling; then project."""

    def __init__(self, in_ch: int, dilations=(6, 12, 18), out_ch: int = 256):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_ch, out_ch, 1)]
            + [conv_bn_relu(in_ch, out_ch, 3, d) for d in dilations]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_ch, out_ch, 1))
        self.project = conv_bn_relu(out_ch * (len(dilations) + 2), out_ch, 1)

    def forward(self, x):
        outs = [branch(x) for branch in self.branches]
        # Bilinear upsampling of a 1x1 map is a broadcast: expand instead of interpolating.
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: encoder, ASPP on the last feature, fused with the stride-4 feature.

    forward(x) returns logits at the input size. forward(x, feature_perturbation=True) returns
    (logits, logits_fp): the decoder runs once on the features and their Dropout2d copies
    concatenated, so BatchNorm normalises both halves together as in UniMatch.

    forward(x, outputs=(...)) returns a dict with the named outputs instead:
    - "logits": as forward(x);
    - "features": the decoder's concatenation (48 low-level + 256 ASPP channels, stride 4);
    - "representation": the representation head on those features, stride 4 (only when built
      with `representation_dim`: CSS's head, 304 -> 3x3 conv 256, BN, ReLU -> 1x1 conv dim, as
      `DeepLabv3Plus_with_rep.representation` in the public CSS code, beside the classifier);
    - "aux": the auxiliary head's logits at the input size (only when built with `aux_head`:
      U2PL's `Aux_Module`, as iMAS trains Cityscapes: the third ResNet stage -> 3x3 conv 256
      without bias, BN, ReLU -> 1x1 conv to the classes; trained on labeled images only).

    `decoder_convs`: the 3x3 convs between the concatenation and the classifier: 2 as UniMatch
    and U2PL, 1 as the public CSS code's `DeepLabv3Plus_with_rep.classifier`.
    `multi_grid`: U2PL's multi-grid dilations of the last ResNet stage (encoders.apply_multi_grid).
    `stem_pool_ceil`: U2PL's stem max-pool in ceil mode (encoders.build_encoder).
    """

    # What build checks before training: the inputs it takes (rgb | channels | pair) and
    # whether forward(x, outputs=("features",)) gives decoder features (CSS's representation head).
    inputs = ("rgb",)
    decoder_features = True

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet101",
        pretrained: str | None = None,
        pretrained_dir: str = "pretrained",
        output_stride: int = 16,
        deep_stem: bool = True,
        dilations=(6, 12, 18),
        fp_dropout: float = 0.5,
        representation_dim: int | None = None,
        aux_head: bool = False,
        multi_grid: bool = False,
        decoder_convs: int = 2,
        stem_pool_ceil: bool = False,
    ):
        super().__init__()
        if decoder_convs not in (1, 2):
            raise ConfigError(
                f"model.decoder_convs={decoder_convs}: use 2 (UniMatch's, U2PL's decoder) or 1 "
                "(the public CSS code's classifier)"
            )
        self.backbone = build_encoder(
            encoder,
            output_stride,
            deep_stem,
            multi_grid=multi_grid,
            stage3=aux_head,
            stem_pool_ceil=stem_pool_ceil,
        )
        # imagenet | scratch | a path (see encoders.resolve_init); None is scratch
        load_init(self.backbone, encoder, pretrained, pretrained_dir, deep_stem)
        low_ch, high_ch = self.backbone.channels
        self.fp_dropout = fp_dropout
        self.head = ASPP(high_ch, dilations)
        self.reduce = conv_bn_relu(low_ch, 48, 1)
        # 3x3 convs before the classifier: two (UniMatch, U2PL) or one (CSS); the same key names
        fuse = [conv_bn_relu(256 + 48, 256, 3), conv_bn_relu(256, 256, 3)]
        self.fuse = nn.Sequential(*fuse[:decoder_convs])
        self.classifier = nn.Conv2d(256, num_classes, 1)
        # Built only when a method asks for it (CSS), so other checkpoints keep their keys.
        self.representation = (
            nn.Sequential(conv_bn_relu(256 + 48, 256, 3), nn.Conv2d(256, representation_dim, 1))
            if representation_dim
            else None
        )
        self.aux = (
            nn.Sequential(
                conv_bn_relu(self.backbone.stage3_channels, 256, 3),
                nn.Conv2d(256, num_classes, 1),
            )
            if aux_head
            else None
        )

    def features(self, low, high):
        """The decoder's concatenation of reduced low-level and upsampled ASPP features."""
        high = upsample(self.head(high), low.shape[-2:])
        return torch.cat([self.reduce(low), high], dim=1)

    def decode(self, low, high, size):
        return upsample(self.classifier(self.fuse(self.features(low, high))), size)

    def encode(self, x):
        """(stride-4 feature, last feature) of the input; the siamese change model overrides it."""
        features = self.backbone(x)
        return features[0], features[-1]

    def forward(
        self, x, feature_perturbation: bool = False, outputs: tuple[str, ...] | None = None
    ):
        if outputs is not None and "aux" in outputs:
            if self.aux is None or feature_perturbation:
                raise ValueError(
                    "outputs=('aux', ...) needs a model built with aux_head=True and no "
                    "feature_perturbation"
                )
            low, stage3, high = self.backbone(x)
            rest = tuple(name for name in outputs if name != "aux")
            result = {}
            if rest:
                result = self.named_outputs(self.features(low, high), x.shape[-2:], rest)
            result["aux"] = upsample(self.aux(stage3), x.shape[-2:])
            return result
        low, high = self.encode(x)
        if outputs is not None:
            if feature_perturbation:
                raise ValueError("outputs=... and feature_perturbation=True cannot be combined")
            return self.named_outputs(self.features(low, high), x.shape[-2:], outputs)
        if not feature_perturbation:
            return self.decode(low, high, x.shape[-2:])
        # The perturbation is part of training the decoder, not a regulariser to switch off in
        # eval mode: dropout stays active whatever the module mode.
        low = torch.cat([low, F.dropout2d(low, self.fp_dropout, training=True)])
        high = torch.cat([high, F.dropout2d(high, self.fp_dropout, training=True)])
        logits, logits_fp = self.decode(low, high, x.shape[-2:]).chunk(2)
        return logits, logits_fp

    def named_outputs(self, features, size, outputs) -> dict[str, torch.Tensor]:
        unknown = set(outputs) - {"logits", "features", "representation"}
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}: logits, features, representation")
        result = {}
        if "logits" in outputs:
            result["logits"] = upsample(self.classifier(self.fuse(features)), size)
        if "features" in outputs:
            result["features"] = features
        if "representation" in outputs:
            if self.representation is None:
                raise ValueError("this model has no representation head (representation_dim)")
            result["representation"] = self.representation(features)
        return result

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        """Every parameter outside the backbone (the optimizer's lr_multi group)."""
        return (p for name, p in self.named_parameters() if not name.startswith("backbone."))
