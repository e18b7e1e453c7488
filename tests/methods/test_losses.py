"""Loss math against values worked out by hand."""

import math

import pytest
import torch

from semiseg.augment.mixing import paste
from semiseg.methods.losses import (
    consistency_loss,
    mask_ratio,
    ohem_ce,
    pseudo_label_accuracy,
    pseudo_labels,
)
from semiseg.methods.weak_to_strong import Targets


def two_class_logits(p_class0: list[float]) -> torch.Tensor:
    """(1, 2, 1, W) logits whose softmax gives probability p for class 0 at each pixel."""
    p = torch.tensor(p_class0, dtype=torch.float64)
    return torch.stack((p.log(), (1 - p).log()))[None, :, None, :]


def row(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)[None, None, :]


def test_consistency_loss_threshold_boundary_and_padding():
    # Uniform logits: every pixel's CE is ln 2 whatever its label.
    logits = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    labels = row([0, 1, 0, 1], torch.long)
    conf = row([0.95, 0.9499, 0.99, 0.99])
    ignore = row([0, 0, 0, 255], torch.long)
    # Kept: pixel 0 (conf == tau counts), pixel 2; pixel 1 under tau; pixel 3 padded.
    # Denominator: the 3 non-padded pixels, not the 2 confident ones.
    loss = consistency_loss(logits, labels, conf, ignore, tau=0.95)
    assert loss.item() == pytest.approx(2 * math.log(2) / 3)


def test_consistency_loss_counts_non_padded_not_confident_pixels():
    logits = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    labels = row([0, 0, 0, 0], torch.long)
    conf = row([0.99, 0.1, 0.1, 0.1])
    ignore = row([0, 0, 0, 0], torch.long)
    assert consistency_loss(logits, labels, conf, ignore, 0.95).item() == pytest.approx(
        math.log(2) / 4
    )


def test_box_pasted_from_mix_batch_supplies_labels_conf_and_ignore():
    # Class-0 probability 0.8 everywhere: CE(label 0) = -ln 0.8, CE(label 1) = -ln 0.2.
    logits = two_class_logits([0.8, 0.8, 0.8, 0.8])
    box = row([0, 1, 1, 0], torch.long)
    ours = {"labels": row([0, 0, 0, 0], torch.long), "conf": row([0.99] * 4)}
    ignore = row([0, 0, 0, 0], torch.long)
    mix = {
        "labels": row([1, 1, 1, 1], torch.long),
        "conf": row([0.5, 0.99, 0.5, 0.99]),  # inside the box: pixel 1 confident, pixel 2 not
        "ignore": row([0, 0, 255, 0], torch.long),  # pixel 2 is padding in the partner image
    }
    labels, conf, ign = Targets(ours["labels"], ours["conf"], ignore).cutmix(
        box, Targets(mix["labels"], mix["conf"], mix["ignore"])
    )
    assert labels.tolist() == [[[0, 1, 1, 0]]]
    assert conf.tolist() == [[[0.99, 0.99, 0.5, 0.99]]]
    assert ign.tolist() == [[[0, 0, 255, 0]]]
    loss = consistency_loss(logits, labels, conf, ign, tau=0.95)
    # Pixels 0 and 3: label 0 confident; pixel 1: label 1 confident; pixel 2: padded.
    expected = (2 * -math.log(0.8) + -math.log(0.2)) / 3
    assert loss.item() == pytest.approx(expected)


def test_paste_images_broadcasts_box_over_channels_and_copies():
    target = torch.zeros(2, 3, 2, 2)
    source = torch.ones(2, 3, 2, 2)
    box = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
    out = paste(box, target, source)
    assert out[0, :, 0, 0].tolist() == [1, 1, 1]
    assert out[1, :, 1, 1].tolist() == [1, 1, 1]
    assert out.sum().item() == 6  # 2 pixels x 3 channels
    assert target.sum().item() == 0  # untouched


def test_mask_ratio_and_pseudo_accuracy():
    conf = row([0.96, 0.96, 0.5, 0.99])
    ignore = row([0, 0, 0, 255], torch.long)
    assert mask_ratio(conf, ignore, 0.95).item() == pytest.approx(2 / 3)
    labels = row([1, 2, 2, 0], torch.long)
    gt = row([1, 0, 2, 255], torch.long)
    # Confident and labeled: pixels 0 (right) and 1 (wrong); pixel 3 confident but unknown gt.
    assert pseudo_label_accuracy(labels, conf, gt, 0.95).item() == pytest.approx(0.5)
    assert torch.isnan(pseudo_label_accuracy(labels, conf, torch.full_like(gt, 255), 0.95))


def test_pseudo_labels_are_softmax_max_without_grad():
    logits = two_class_logits([0.3, 0.9]).float().requires_grad_()
    conf, labels = pseudo_labels(logits)
    assert labels.tolist() == [[[1, 0]]]
    assert conf.flatten().tolist() == pytest.approx([0.7, 0.9])
    assert not conf.requires_grad


@pytest.mark.parametrize(
    "min_kept, kept_probs",
    [
        (1, [0.6, 0.3]),  # threshold stays at 0.7
        (3, [0.6, 0.3, 0.8]),  # 3rd smallest true-class prob 0.8 raises the threshold
        (5, [0.9, 0.6, 0.3, 0.8]),  # fewer labeled pixels than min_kept: plain CE
    ],
)
def test_ohem_keeps_hard_pixels(min_kept, kept_probs):
    logits = two_class_logits([0.9, 0.6, 0.3, 0.8])
    target = row([0, 0, 0, 0], torch.long)
    expected = sum(-math.log(p) for p in kept_probs) / len(kept_probs)
    assert ohem_ce(logits, target, thresh=0.7, min_kept=min_kept).item() == pytest.approx(expected)


def test_ohem_ignores_255():
    logits = two_class_logits([0.9, 0.6, 0.3, 0.8])
    target = row([0, 255, 0, 0], torch.long)
    # Valid true-class probs 0.9, 0.3, 0.8; min_kept 1 -> threshold 0.7 -> only 0.3 kept.
    assert ohem_ce(logits, target, 0.7, 1).item() == pytest.approx(-math.log(0.3))
