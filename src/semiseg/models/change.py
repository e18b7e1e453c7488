"""The siamese DeepLabV3+ of the public UniMatch remote-sensing code, for change detection.

The input is a pair as one 6-channel tensor (A's RGB, then B's; data/change.py). As the public
model/semseg/deeplabv3plus.py: one backbone with shared weights encodes A and B in two separate
passes (so in training each image set has its own BatchNorm batch statistics), and the decoder
(ASPP on the last feature fused with the stride-4 feature) runs on the absolute differences
|f(A) - f(B)| of both features. UniMatch's feature perturbation drops channels of those
difference features (Dropout2d 0.5 on both), which is what `DeepLabV3Plus.forward` does with the
features `encode` returns, so the perturbed stream, CSS's `outputs=` and the parameter groups
are the ones of DeepLabV3+. The public recipe: ResNet-50 (deep stem), output stride 16,
dilations 6/12/18.
"""

from __future__ import annotations

import torch

from semiseg.errors import ConfigError
from semiseg.models.deeplabv3plus import DeepLabV3Plus


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
