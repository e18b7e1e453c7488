"""The 2D UNet of the public UniMatch medical code (ACDC), and smp's UNet as an option.

Five levels of two 3x3 conv + BatchNorm + LeakyReLU blocks (widths 16, 32, 64, 128, 256 by
default), dropout inside each encoder block (0.05 ... 0.5), max-pool down, transposed-conv up,
skip concatenation, and a 3x3 conv classifier. Trained from scratch: nothing is loaded.

`forward(x, feature_perturbation=True)` returns (logits, logits_fp): the decoder runs once on the
encoder features and their Dropout2d copies concatenated (every level perturbed), as UniMatch's
feature-perturbed stream does on this network.

One learning rate for every layer, as the public medical code: `backbone_parameters()` is the
encoder, `head_parameters()` the decoder; the ACDC recipe sets `optim.lr_multi=1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def double_conv(in_ch: int, out_ch: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(),
    )


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: list[int], dropout: list[float]):
        super().__init__()
        self.stages = nn.ModuleList([double_conv(in_channels, widths[0], dropout[0])])
        for i in range(1, len(widths)):
            self.stages.append(double_conv(widths[i - 1], widths[i], dropout[i]))

    def forward(self, x) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            features.append(x)
        return features


class UpStage(nn.Module):
    """Transposed conv x2 to the skip's width, concatenation [skip, up], two convs."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, skip_ch, 2, stride=2)
        self.conv = double_conv(2 * skip_ch, out_ch, 0.0)

    def forward(self, x, skip):
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd sizes: pad the upsampled map to the skip's
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, (0, dw, 0, dh))
        return self.conv(torch.cat([skip, x], dim=1))


class UNetDecoder(nn.Module):
    def __init__(self, widths: list[int], num_classes: int):
        super().__init__()
        rev = widths[::-1]
        self.ups = nn.ModuleList(
            UpStage(rev[i], rev[i + 1], rev[i + 1]) for i in range(len(rev) - 1)
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, features[-2::-1], strict=True):
            x = up(x, skip)
        return self.classifier(x)


class UNet(nn.Module):
    """`encoder` and `pretrained` are accepted for the run's records (always `scratch`)."""

    inputs = ("rgb", "channels")  # model.in_channels: any number of channels
    decoder_features = False

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths=(16, 32, 64, 128, 256),
        dropout=(0.05, 0.1, 0.2, 0.3, 0.5),
        fp_dropout: float = 0.5,
        encoder: str = "unet",
        pretrained: str | None = "scratch",
        pretrained_dir: str | None = None,
        representation_dim: int | None = None,
    ):
        super().__init__()
        widths, dropout = list(widths), list(dropout)
        if len(widths) != len(dropout):
            raise ValueError(f"model.widths {widths} and model.dropout {dropout} differ in length")
        if pretrained not in (None, "scratch"):
            raise ValueError(f"model.pretrained={pretrained!r}: the UNet trains from scratch")
        if representation_dim:
            raise ValueError("the UNet has no representation head (method=css needs DeepLabV3+)")
        self.in_channels = in_channels
        self.fp_dropout = fp_dropout
        self.backbone = UNetEncoder(in_channels, widths, dropout)
        self.decoder = UNetDecoder(widths, num_classes)

    def forward(self, x, feature_perturbation: bool = False):
        features = self.backbone(x)
        if not feature_perturbation:
            return self.decoder(features)
        return decode_perturbed(self.decoder, features, self.fp_dropout)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.decoder.parameters()


def decode_perturbed(decode, features: list[torch.Tensor], p: float):
    """(logits, logits_fp): UniMatch's clean and feature-perturbed streams of the multi-scale
    encoder `features`, decoded as one batch; the perturbed stream is Dropout2d(p) on every
    feature. As in DeepLabV3Plus, the dropout stays on in eval mode (it is part of training)."""
    both = [torch.cat([f, F.dropout2d(f, p, training=True)]) for f in features]
    logits, logits_fp = decode(both).chunk(2)
    return logits, logits_fp


class SmpUNet(nn.Module):
    """segmentation-models-pytorch's UNet (`encoder` an smp encoder name, random weights), with
    the same interface; the perturbed stream applies Dropout2d to every encoder feature."""

    inputs = ("rgb", "channels")  # model.in_channels: any number of channels
    decoder_features = False

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        encoder: str = "resnet18",
        fp_dropout: float = 0.5,
        pretrained: str | None = "scratch",
        pretrained_dir: str | None = None,
        representation_dim: int | None = None,
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        if pretrained not in (None, "scratch"):
            raise ValueError(f"model.pretrained={pretrained!r}: smp_unet trains from scratch")
        if representation_dim:
            raise ValueError("smp_unet has no representation head (method=css needs DeepLabV3+)")
        self.net = smp.Unet(
            encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
        )
        self.fp_dropout = fp_dropout

    def _decode(self, features):
        out = self.net.decoder(features)
        return self.net.segmentation_head(out)

    def forward(self, x, feature_perturbation: bool = False):
        features = self.net.encoder(x)
        if not feature_perturbation:
            return self._decode(features)
        return decode_perturbed(self._decode, features, self.fp_dropout)

    def backbone_parameters(self):
        return self.net.encoder.parameters()

    def head_parameters(self):
        return (p for n, p in self.net.named_parameters() if not n.startswith("encoder."))
