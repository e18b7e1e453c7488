"""Pooled encoder features (kcenter) and the per-image scores of a pool."""

import numpy as np
import torch

from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.models.unet import UNet
from semiseg.selection.scoring import pooled_encoder_features, small_map


def test_deeplab_features_are_the_deepest_backbone_map_averaged():
    torch.manual_seed(0)
    model = DeepLabV3Plus(3, encoder="resnet18", pretrained="scratch").eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.backbone(image)[1].mean((2, 3))
        pooled = pooled_encoder_features(model, image)
    assert pooled.shape == (2, 512) and torch.allclose(pooled, expected, atol=1e-6)


def test_unet_features_are_its_last_level():
    torch.manual_seed(0)
    model = UNet(3, in_channels=1).eval()
    image = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = model.backbone(image)[-1].mean((2, 3))
        pooled = pooled_encoder_features(model, image)
    assert torch.allclose(pooled, expected, atol=1e-6)


def test_small_map_keeps_the_mean():
    pixel_map = torch.rand(192, 96)  # halved exactly: every pixel weighs the same
    small = small_map(pixel_map)
    assert small.shape == (96, 48)
    assert np.isclose(small.mean(), float(pixel_map.mean()), atol=1e-4)
