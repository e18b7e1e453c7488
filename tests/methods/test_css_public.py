"""CSS's unsupervised and contrastive losses against transcriptions of the public
`Attention_Threshold_Loss` and `Contrast_Loss` (tests/public_css.py). The contrastive loss draws
anchors and negatives at random, differently here and there: the inputs are built so that every
draw gives the same value (the pixels of a class share one representation; the classes an anchor
may draw negatives from share one too), so the two must agree exactly on any draw."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semiseg.methods.contrastive import (
    class_sums,
    confident_fraction,
    contrastive_loss,
    update_prototypes,
    weighted_pseudo_label_loss,
)

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_css import public_attention_threshold_loss, public_contrast_loss  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_threshold_loss_equals_the_public_one(seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 6, 6), generator=g)
    valid = torch.rand(3, 6, 6, generator=g) > 0.3
    valid[2] = False  # an image without a label: the public weight is 0/0, its CE all 0
    conf = torch.rand(3, 6, 6, generator=g, dtype=torch.float64)
    public = public_attention_threshold_loss(pred, labels.masked_fill(~valid, -1), conf, 0.6)
    weights = confident_fraction(conf, valid, 0.6)
    ours = weighted_pseudo_label_loss(pred, labels, valid, weights)
    torch.testing.assert_close(ours, public)


def _inputs(vectors, classes, hard, mask_out):
    """rep (1, D, h, w) with every pixel of class c at vectors[c] (masked-out pixels random),
    one-hot labels, the mask and an indicator that marks `hard` pixels (< 0.8) per class."""
    h, w = classes.shape
    g = torch.Generator().manual_seed(7)
    rep = torch.stack([vectors[c] for c in classes.flatten()]).T.reshape(1, -1, h, w).clone()
    rep[0][:, mask_out] = torch.randn(rep.shape[1], int(mask_out.sum()), generator=g)
    num_classes = len(vectors)
    onehot = F.one_hot(classes, num_classes).permute(2, 0, 1)[None].float()
    mask = (~mask_out).float()[None, None]
    prob = torch.full((1, num_classes, h, w), 0.9)
    prob[0, :, hard] = 0.5
    return rep, onehot, mask, prob


@pytest.mark.parametrize("case", ["two classes, kept prototypes", "three, one anchor class, new"])
def test_contrast_loss_and_prototype_update_equal_the_public_ones(case):
    g = torch.Generator().manual_seed(1)
    classes = torch.tensor([[0, 0, 1, 1, 2, 2]] * 4) % (2 if case.startswith("two") else 3)
    mask_out = torch.zeros(4, 6, dtype=torch.bool)
    mask_out[0, :] = True  # pixels left out (weak labels): neither prototype nor pool
    if case.startswith("two"):
        vectors = torch.randn(2, 5, generator=g)
        hard = torch.ones(4, 6, dtype=torch.bool)
        prototypes = torch.randn(2, 5, generator=g)
    else:
        shared = torch.randn(5, generator=g)
        vectors = torch.stack((torch.randn(5, generator=g), shared, shared))
        hard = classes == 0  # anchors of class 0 only; their negatives all look alike
        prototypes = torch.zeros(3, 5)
    rep, onehot, mask, prob = _inputs(vectors, classes, hard, mask_out)

    public_protos = prototypes.clone()
    public = public_contrast_loss(rep, onehot, mask, prob, public_protos, 8, 16, 0.5, 0.8, 0.99)

    labels = classes.masked_fill(mask_out, 255)[None]
    sums, counts = class_sums(rep, labels, len(vectors))
    new = update_prototypes(prototypes, sums, counts, 0.99)
    ours = contrastive_loss(rep, labels, prob, new, 0.8, 8, 16, 0.5)
    torch.testing.assert_close(new, public_protos)
    torch.testing.assert_close(ours, public)
    assert public > 0
