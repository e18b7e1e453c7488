"""The public medical code's soft Dice loss and its (CE + Dice) / 2 labeled loss, by hand."""

import math

import pytest
import torch

from semiseg.methods.losses import ce_dice, confident_dice_loss, dice_loss

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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unlabeled_dice_on_confident_pixels_equals_the_public_one(seed):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from public_medical import public_dice_loss, public_unlabeled_dice

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 8, 8, generator=g) * 3
    labels = torch.randint(0, 4, (3, 8, 8), generator=g)
    conf = torch.rand(3, 8, 8, generator=g)
    conf[0, 0, 0] = 0.95  # a tie at the threshold is confident (their ignore is conf < thresh)
    no_padding = torch.zeros(3, 8, 8, dtype=torch.long)
    ours = confident_dice_loss(logits, labels, conf, no_padding, 0.95 if seed else 0.5)
    public = public_unlabeled_dice(logits, labels, conf, 0.95 if seed else 0.5)
    torch.testing.assert_close(ours, public)
    # and the labeled Dice of the (CE + Dice) / 2 loss, without ignore
    torch.testing.assert_close(
        dice_loss(logits, labels), public_dice_loss(logits.softmax(1), labels, 4)
    )
    # padded pixels (semiseg's ignore mask) are left out as if unconfident
    padded = no_padding.clone()
    padded[:, :, -2:] = 255
    ours = confident_dice_loss(logits, labels, conf, padded, 0.5)
    unconfident = conf.masked_fill(padded == 255, 0.0)
    torch.testing.assert_close(ours, public_unlabeled_dice(logits, labels, unconfident, 0.5))


def test_acdc_configs_choose_the_public_unlabeled_loss_partner_and_baseline_batch():
    import sys
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from cli import REPO

    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("train", overrides=list(overrides))

    for method in ("unimatch", "fixmatch"):
        acdc = cfg(f"experiment={method}_acdc")
        assert (acdc.method.unlabeled_loss, acdc.method.mix_partner) == ("dice", "shuffle")
        assert acdc.data.batch_size == 12
        pascal = cfg(f"method={method}", "dataset=pascal")
        assert (pascal.method.unlabeled_loss, pascal.method.mix_partner) == ("ce", "same")
    supervised = cfg("experiment=supervised_acdc")
    assert (supervised.data.batch_size, supervised.optim.reference_batch) == (24, 24)
    assert supervised.optim.lr == 0.01
