"""Segmentation models: encoders by name and the DeepLabV3+ head."""

from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.models.encoders import build_encoder, load_pretrained

__all__ = ["DeepLabV3Plus", "build_encoder", "load_pretrained"]
