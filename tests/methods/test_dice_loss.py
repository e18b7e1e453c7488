"""The public medical code's soft Dice loss and its (CE + Dice) / 2 labeled loss, by hand."""

import math

import pytest
import torch

from semiseg.methods.losses import ce_dice, dice_loss

EPS = 1e-5


def test_dice_loss_by_hand():
    # two pixels, equal logits: p = 0.5 everywhere; targets 0 and 1
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # each class: sum(p t) = 0.5, sum(p^2) = 0.5, sum(t^2) = 1 -> 1 - (1 + e) / (1.5 + e)
    expected = 1 - (1 + EPS) / (1.5 + EPS)
    assert dice_loss(logits, target).item() == pytest.approx(expected)
    assert ce_dice(logits, target).item() == pytest.approx((math.log(2) + expected) / 2)


def test_dice_loss_ignores_255_and_is_near_zero_when_right():
    logits = torch.tensor([[[[20.0, -20.0, 0.0]], [[-20.0, 20.0, 0.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # a class absent from target and prediction: (0 + e) / (0 + e) = 1, no loss
    logits3 = torch.cat([logits, torch.full((1, 1, 1, 3), -50.0)], dim=1)
    assert dice_loss(logits3, target).item() == pytest.approx(0.0, abs=1e-6)
