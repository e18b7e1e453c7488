"""DeepLabV2 as FST's and DAFormer's UDA tables build it (configs/_base_/models/deeplabv2_r50-d8.py
and deeplabv2red_r101-d8.py of usr922/FST; mmseg's DLV2Head from lhoyer/DAFormer).

Encoder: mmseg's ResNetV1c-101: the deep stem (3x3 convs 3->32 stride 2, 32->32, 32->64, each
with BN and ReLU), max pooling, the four bottleneck stages with strides (1, 2, 1, 1) and
dilations (1, 1, 2, 4), the first block of a dilated stage at half the dilation
(`contract_dilation`), the stride on the 3x3 conv (`style='pytorch'`): output stride 8. Built
from timm's ResNet (`stem_type='deep'`, `stem_width=32`, `output_stride=8` is that network),
with the stem regrouped under mmseg's names (`stem.0` ... `stem.7`), so open-mmlab's
`resnet101_v1c` ImageNet file loads into every tensor. The forward returns the four stage
features.

Head (DLV2Head): one 3x3 conv (with bias, no BN or ReLU) to the classes per dilation on the last
feature, the outputs summed; weights N(0, 0.01). The public ResNet-101 row uses dilations
(6, 12) (`deeplabv2red`: the earlier UDA code returns inside its loop over the four rates);
`model.dilations=[6,12,18,24]` is the original DeepLabV2. Logits upsampled to the input size
(bilinear, align_corners=False).
"""

from __future__ import annotations

import timm
import torch.nn.functional as F
from torch import nn

from semiseg.errors import ConfigError
from semiseg.models.encoders import load_pretrained, resolve_init

DEPTHS = {"resnet50_v1c": "resnet50", "resnet101_v1c": "resnet101"}


class ResNetV1c(nn.Module):
    """mmseg's ResNetV1c with output stride 8, under mmseg's tensor names."""

    def __init__(self, name: str = "resnet101_v1c"):
        super().__init__()
        if name not in DEPTHS:
            raise ConfigError(f"model.encoder={name}: one of {', '.join(DEPTHS)}")
        net = timm.create_model(
            DEPTHS[name], stem_type="deep", stem_width=32, output_stride=8, pretrained=False
        )
        # timm's deep stem is conv1 = (conv, bn, relu, conv, bn, relu, conv), then bn1, act1;
        # mmseg's is one Sequential `stem` of the nine.
        self.stem = nn.Sequential(*net.conv1, net.bn1, net.act1)
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4,
        )  # fmt: skip
        self.channels = (256, 512, 1024, 2048)

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


class DLV2Head(nn.Module):
    """The public DLV2Head: per dilation a 3x3 conv to the classes, the outputs summed."""

    def __init__(self, in_ch: int, num_classes: int, dilations=(6, 12)):
        super().__init__()
        self.aspp_modules = nn.ModuleList()
        for d in dilations:
            branch = nn.Module()  # mmcv's ConvModule without norm or activation: `conv` only
            branch.conv = nn.Conv2d(in_ch, num_classes, 3, padding=d, dilation=d, bias=True)
            nn.init.normal_(branch.conv.weight, std=0.01)  # init_cfg Normal(std=0.01)
            nn.init.zeros_(branch.conv.bias)
            self.aspp_modules.append(branch)

    def forward(self, x):
        out = self.aspp_modules[0].conv(x)
        for branch in self.aspp_modules[1:]:
            out = out + branch.conv(x)
        return out


class DeepLabV2(nn.Module):
    """ResNetV1c + DLV2Head; forward(x) gives logits at the input size."""

    inputs = ("rgb",)
    decoder_features = False

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet101_v1c",
        pretrained: str | None = "imagenet",
        pretrained_dir: str = "pretrained",
        dilations=(6, 12),
        representation_dim: int | None = None,
    ):
        super().__init__()
        if representation_dim:
            raise ConfigError("model=deeplabv2 has no representation head: use model=deeplabv3plus")
        self.backbone = ResNetV1c(encoder)
        init = resolve_init(encoder, pretrained, pretrained_dir)
        if init.path is not None:
            load_pretrained(self.backbone, init.path)
        self.decode_head = DLV2Head(self.backbone.channels[-1], num_classes, tuple(dilations))

    def forward(self, x):
        logits = self.decode_head(self.backbone(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        """The decode head (the public `head` parameter group, lr x 10)."""
        return self.decode_head.parameters()
