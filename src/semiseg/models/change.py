"""Siamese change-detection networks of the public remote-sensing code: DeepLabV3+ (UniMatch) and
DINOv2 + DPT (UniMatch V2).

The input is a pair as one 6-channel tensor (A's RGB, then B's; data/change.py). As the public
model/semseg/deeplabv3plus.py: one backbone with shared weights encodes A and B in two separate
passes (so in training each image set has its own BatchNorm batch statistics), and the decoder
(ASPP on the last feature fused with the stride-4 feature) runs on the absolute differences
|f(A) - f(B)| of both features. UniMatch's feature perturbation drops channels of those
difference features (Dropout2d 0.5 on both), which is what `DeepLabV3Plus.forward` does with the
features `encode` returns, so the perturbed stream, CSS's `outputs=` and the parameter groups
are the ones of DeepLabV3+. The public recipe: ResNet-50 (deep stem), output stride 16,
dilations 6/12/18.

`ChangeDPT` (UniMatch V2's remote-sensing/model/semseg/dpt.py): the ViT encodes A and B in one
batch (cat(A, B); no BatchNorm anywhere, so one pass is two), and the DPT head decodes the
absolute differences |f(A) - f(B)| of the four tapped features. Complementary Dropout multiplies
those differences (the public code masks them after the subtraction), so the two strong pairs of
a step get m and 2 - m on the same channels of their difference features. Inputs off the 14-grid
are resized (both images) to the nearest multiples and the logits back, as for `DPT`.
"""

from __future__ import annotations

import torch

from semiseg.errors import ConfigError
from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.models.dpt import DPT


class ChangeDeepLabV3Plus(DeepLabV3Plus):
    """DeepLabV3+ on the feature differences of an image pair given as (N, 6, H, W)."""

    inputs = ("pair",)

    def __init__(self, *args, in_channels: int = 6, **kwargs):
        if in_channels != 6:
            raise ConfigError(
                f"model.in_channels={in_channels}: the siamese change model takes an image pair "
                "as 6 channels (two RGB images); use a change-detection dataset (format cd)"
            )
        super().__init__(*args, **kwargs)

    def encode(self, x):
        if x.shape[1] != 6:
            raise ValueError(
                f"the siamese change model takes (N, 6, H, W) pairs, got {tuple(x.shape)}"
            )
        low_a, high_a = self.backbone(x[:, :3])
        low_b, high_b = self.backbone(x[:, 3:])
        return torch.abs(low_a - low_b), torch.abs(high_a - high_b)


class ChangeDPT(DPT):
    """DINOv2 + DPT on the feature differences of an image pair given as (N, 6, H, W)."""

    inputs = ("pair",)

    def __init__(self, *args, in_channels: int = 6, **kwargs):
        if in_channels != 6:
            raise ConfigError(
                f"model.in_channels={in_channels}: model=siamese_dpt takes an image pair as 6 "
                "channels (two RGB images); use a change-detection dataset (format cd)"
            )
        super().__init__(*args, **kwargs)

    def encode(self, x):
        if x.shape[1] != 6:
            raise ValueError(f"model=siamese_dpt takes (N, 6, H, W) pairs, got {tuple(x.shape)}")
        both = self.backbone.intermediate(torch.cat((x[:, :3], x[:, 3:])), self.layers)
        return [(a - b).abs() for a, b in (t.chunk(2) for t in both)]
