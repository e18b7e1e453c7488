"""Per-pixel uncertainty of class probabilities (C, H, W), and the per-image score: the mean
over the image's pixels. Every map is in [0, 1], higher meaning less certain."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def entropy_map(probs: Tensor) -> Tensor:
    """Shannon entropy of each pixel's distribution over the C classes, divided by log C (so a
    uniform pixel is 1 and a one-hot pixel 0); 0 log 0 counts 0."""
    num_classes = probs.shape[0]
    p = probs.float().clamp(min=0)
    terms = torch.where(p > 0, p * p.clamp(min=1e-30).log(), torch.zeros_like(p))
    return -terms.sum(0) / math.log(num_classes)


def margin_map(probs: Tensor) -> Tensor:
    """1 - (p_first - p_second): 1 where the two most probable classes tie, 0 where one class
    holds all the probability."""
    top2 = probs.float().topk(2, dim=0).values
    return 1.0 - (top2[0] - top2[1])


def disagreement_map(probs_a: Tensor, probs_b: Tensor) -> Tensor:
    """Total variation between two predictions of the same pixels: half the L1 distance of the
    two distributions (0 when they agree, 1 when they put their mass on different classes)."""
    return 0.5 * (probs_a.float() - probs_b.float()).abs().sum(0)


def image_score(pixel_map: Tensor) -> float:
    """The mean of a per-pixel map: the image's score."""
    return float(pixel_map.float().mean())
