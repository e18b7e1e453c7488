"""FST's distinctive computations against the public formulas: the entropy filter (the top
fraction of valid pixels by the teacher's entropy dropped, ties and padding included), the entropy
of saturated predictions, and the half-area CutMix box sampler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semiseg.augment.mixing import half_area_boxes
from semiseg.methods.losses import entropy, entropy_filtered_ce


def public_unsupervised_loss(predict, target, percent, pred_teacher):
    """U2PL's `compute_unsupervised_loss` as FST's semi_seg/fst/utils/loss_helper.py has it."""
    batch_size, num_class, h, w = predict.shape
    with torch.no_grad():
        prob = torch.softmax(pred_teacher, dim=1)
        ent = -torch.sum(prob * torch.log(prob + 1e-10), dim=1)
        thresh = np.percentile(ent[target != 255].detach().cpu().numpy().flatten(), percent)
        thresh_mask = ent.ge(thresh).bool() * (target != 255).bool()
        target[thresh_mask] = 255
        weight = batch_size * h * w / torch.sum(target != 255)
    return weight * F.cross_entropy(predict, target, ignore_index=255), target != 255


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_filter_equals_the_public_formula(seed):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 5, 9, 11, generator=g)
    teacher = 3 * torch.randn(3, 5, 9, 11, generator=g)
    labels = teacher.argmax(1)
    ours, kept = entropy_filtered_ce(
        student, labels, entropy(teacher), torch.zeros_like(labels), 0.2
    )
    public, public_kept = public_unsupervised_loss(student, labels.clone(), 80, teacher)
    assert torch.equal(kept, public_kept)
    assert torch.allclose(ours, public, rtol=1e-6)
    assert 1 - kept.float().mean() == pytest.approx(0.2, abs=1 / kept.numel())


def test_entropy_filter_drops_the_top_fraction_ties_and_never_padding():
    ent = torch.randperm(100).float().view(1, 10, 10)  # distinct: exactly the top 20 go
    logits = torch.zeros(1, 2, 10, 10)
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    _, kept = entropy_filtered_ce(logits, labels, ent, torch.zeros_like(labels), 0.2)
    assert kept.sum() == 80 and bool((ent[kept] < 80).all())
    # ties at the threshold all go (entropy >= threshold, as the public code)
    tied = torch.where(ent >= 75, torch.tensor(90.0), ent)
    _, kept = entropy_filtered_ce(logits, labels, tied, torch.zeros_like(labels), 0.2)
    assert kept.sum() == 75
    # padded pixels: out of the percentile, never kept, not in the weight
    ignore = torch.zeros_like(labels)
    ignore[:, :5] = 255  # the first 50 pixels, whatever their entropy
    big = ent.clone()
    big[:, :5] = 1e6
    loss, kept = entropy_filtered_ce(logits, labels, big, ignore, 0.2)
    valid = big[ignore == 0]
    assert kept.sum() == 40 and not kept[ignore == 255].any()
    assert bool((big[kept] < np.percentile(valid.numpy(), 80)).all())
    # mean CE over the 40 kept (log 2 each), times 50 valid / 40 kept
    assert loss.item() == pytest.approx(np.log(2) * 50 / 40, rel=1e-6)
    # drop 0: every valid pixel, weight 1; all tied: nothing kept, a zero loss (not NaN)
    loss, kept = entropy_filtered_ce(logits, labels, ent, ignore, 0.0)
    assert kept.sum() == 50 and loss.item() == pytest.approx(np.log(2), rel=1e-6)
    loss, kept = entropy_filtered_ce(logits, labels, torch.zeros_like(ent), ignore, 0.2)
    assert kept.sum() == 0 and loss.item() == 0.0


def test_entropy_of_saturated_predictions_is_finite():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]).view(2, 3, 1, 1)
    ent = entropy(logits).flatten()
    assert torch.isfinite(ent).all()
    assert ent[0].abs() < 1e-6 and ent[1].item() == pytest.approx(np.log(3), rel=1e-6)


def test_half_area_boxes_follow_the_public_sampler():
    for size in (64, 513):
        boxes = half_area_boxes(4000, size, size, generator=torch.Generator().manual_seed(0))
        rows, cols = boxes.any(2), boxes.any(1)
        h, w = rows.sum(1), cols.sum(1)
        # numpy's randint(size / 2 + 1, size): the float low truncated, the high excluded
        np_w = np.random.default_rng(0).integers(int(size / 2 + 1), size, 4000)
        assert w.min() == np_w.min() == size // 2 + 1 and w.max() == np_w.max() == size - 1
        assert torch.equal(h, torch.round(torch.tensor(size * size / 2) / w).long())
        assert torch.equal(boxes.sum((1, 2)), h * w)  # one whole box inside the image each
