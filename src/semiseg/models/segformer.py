"""DAFormer: a SegFormer MiT encoder with the DAFormer head, the network of FST's and DAFormer's
domain-adaptation tables (configs/_base_/models/daformer_sepaspp_mitb5.py of usr922/FST, the
head from lhoyer/DAFormer mmseg/models/decode_heads/daformer_head.py).

Encoder: segmentation-models-pytorch's Mix Transformer (`MixVisionTransformer`). Its tensors
carry the public names (`patch_embed1.proj`, `block1.0.attn.q`, `norm4`, ...) and its layers
the public epsilons (1e-6 in the blocks and stage norms, 1e-5 in the patch embeddings and the
attention's reduction norm), so mmseg's `pretrained/mit_b5.pth` loads into every tensor (its
ImageNet classifier `head.*` is skipped, as the public `load_state_dict(..., False)` skips it).
The forward returns the four stage features (strides 4, 8, 16, 32).

Head (the public DAFormerHead with `embed_cfg=mlp`, `fusion_cfg=aspp, sep=True, dilations=(1, 6,
12, 18), pool=False`): one linear embedding per stage to 256 channels, all upsampled (bilinear,
align_corners=False) to the stride-4 grid and concatenated; the fusion: a 1x1 conv for dilation 1
and a depthwise-separable 3x3 conv (depthwise conv, BN, ReLU, pointwise conv, BN, ReLU) for each
other dilation, concatenated, a 3x3 conv bottleneck (BN, ReLU); dropout 0.1, a 1x1 classifier;
logits upsampled to the input (bilinear, align_corners=False). Module names follow mmcv's
(`conv`/`bn` in a ConvModule, `depthwise_conv`/`pointwise_conv`), so a DAFormer checkpoint's
`decode_head.*` tensors keep their names here.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import mix_transformer as smp_mit
from torch import nn

from semiseg.errors import ConfigError
from semiseg.models.encoders import load_pretrained, resolve_init

# The public mit_b0 ... mit_b5 (mmseg/models/backbones/mix_transformer.py): widths, heads, depths.
MIT_SIZES = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
    "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}


class MiT(smp_mit.MixVisionTransformer):
    """The public Mix Transformer; forward gives its four stage features."""

    # Bookkeeping of the public ImageNet file that the segmentation backbone has no place for.
    ignored_key_parts = ("head.",)

    def __init__(self, name: str = "mit_b5", drop_path_rate: float = 0.1):
        if name not in MIT_SIZES:
            raise ConfigError(f"model.encoder={name}: one of {', '.join(MIT_SIZES)}")
        dims, depths = MIT_SIZES[name]
        super().__init__(
            patch_size=4,
            embed_dims=dims,
            num_heads=[1, 2, 5, 8],
            mlp_ratios=[4, 4, 4, 4],
            qkv_bias=True,
            norm_layer=partial(smp_mit.LayerNorm, eps=1e-6),
            depths=depths,
            sr_ratios=[8, 4, 2, 1],
            drop_path_rate=drop_path_rate,  # the public default, 0.1
        )
        self.channels = tuple(dims)

    def forward(self, x):
        return self.forward_features(x)


class ConvBNReLU(nn.Module):
    """mmcv's ConvModule (conv without bias, `bn`, ReLU) under its tensor names."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        padding = dilation * (kernel // 2)
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, padding=padding, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """mmcv's DepthwiseSeparableConvModule: a depthwise 3x3 ConvModule, a pointwise one."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvBNReLU(in_ch, in_ch, 3, dilation, groups=in_ch)
        self.pointwise_conv = ConvBNReLU(in_ch, out_ch, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class LinearEmbedding(nn.Module):
    """The public `MLP` of segformer_head.py: a per-position linear map, back to (N, C, h, w)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = nn.Linear(in_ch, out_ch)

    def forward(self, x):
        n, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)


class SeparableASPP(nn.Module):
    """The public ASPPWrapper with sep=True, pool=False: the branches, concatenated, then a 3x3
    bottleneck."""

    def __init__(self, in_ch: int, channels: int, dilations=(1, 6, 12, 18)):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_ch, channels, 1) if d == 1 else SeparableConvBNReLU(in_ch, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x):
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """The public DAFormerHead (daformer_sepaspp_mitb5.py): embed, upsample, fuse, classify."""

    def __init__(
        self,
        in_channels,
        num_classes: int,
        embed_dim: int = 256,
        channels: int = 256,
        dilations=(1, 6, 12, 18),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embed_layers = nn.ModuleDict(
            {str(i): LinearEmbedding(c, embed_dim) for i, c in enumerate(in_channels)}
        )
        self.fuse_layer = SeparableASPP(embed_dim * len(in_channels), channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features):
        size = features[0].shape[-2:]
        embedded = []
        for i, feature in enumerate(features):
            e = self.embed_layers[str(i)](feature)
            if e.shape[-2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(embedded, dim=1))))


class DAFormer(nn.Module):
    """MiT encoder + DAFormer head; forward(x) gives logits at the input size."""

    inputs = ("rgb",)
    decoder_features = False

    def __init__(
        self,
        num_classes: int,
        encoder: str = "mit_b5",
        pretrained: str | None = "imagenet",
        pretrained_dir: str = "pretrained",
        embed_dim: int = 256,
        channels: int = 256,
        dilations=(1, 6, 12, 18),
        dropout: float = 0.1,
        drop_path_rate: float = 0.1,
        representation_dim: int | None = None,
    ):
        super().__init__()
        if representation_dim:
            raise ConfigError("model=daformer has no representation head: use model=deeplabv3plus")
        self.backbone = MiT(encoder, drop_path_rate)
        init = resolve_init(encoder, pretrained, pretrained_dir)
        if init.path is not None:
            load_pretrained(self.backbone, init.path)
        self.decode_head = DAFormerHead(
            self.backbone.channels, num_classes, embed_dim, channels, tuple(dilations), dropout
        )

    def forward(self, x):
        logits = self.decode_head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        """The decode head (the public `head` parameter group, lr x 10)."""
        return self.decode_head.parameters()
