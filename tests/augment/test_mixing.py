"""Batched CutMix: boxes, iMAS's hard CutMix and AugSeg's label injection, worked out by hand."""

import random

import pytest
import torch

from semiseg.augment.mixing import (
    Mixed,
    beta_whole,
    box_masks,
    centred_boxes,
    cutmix_with,
    hard_cutmix,
    hard_cutmix_triggered,
    hardness_partners,
    inject_then_mix,
    label_injecting_cutmix,
    unimatch_boxes,
)
from semiseg.data.transforms import cutmix_box


def row_boxes(*rows) -> torch.Tensor:
    """(N, 1, W) bool boxes from lists of 0/1."""
    return torch.tensor(rows, dtype=torch.bool)[:, None, :]


def rows(t: torch.Tensor) -> list:
    """(N, 1, W) -> per image list; (N, 3, 1, W) -> channel 0."""
    return (t[:, 0, 0] if t.dim() == 4 else t[:, 0]).tolist()


def conf_rows(out: Mixed, expected: list) -> bool:
    return torch.allclose(out.conf[:, 0], torch.tensor(expected))


def test_box_masks_clip_at_the_border():
    box = box_masks(
        torch.tensor([-2, 3]),
        torch.tensor([2, 9]),
        torch.tensor([1, -1]),
        torch.tensor([3, 1]),
        4,
        4,
    )
    assert box[0].int().tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert box[1].int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_centred_boxes_follow_the_public_geometry():
    g = torch.Generator().manual_seed(0)
    # side 0 (lambda = 1): no box at all
    assert not centred_boxes(8, 16, 16, 0.0, 8, g).any()
    # 10 * 0.5 = 5 rows -> centre +- 2: 4 rows (the public code loses a pixel on odd sizes)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    box = centred_boxes(64, 10, 12, 0.5, 8, g1)
    cy = torch.randint(10 // 8, 10, (64,), generator=g2)
    cx = torch.randint(12 // 8, 12, (64,), generator=g2)
    for b, y, x in zip(box, cy.tolist(), cx.tolist(), strict=True):
        expect = torch.zeros(10, 12, dtype=torch.bool)
        expect[max(y - 2, 0) : y + 2, max(x - 3, 0) : x + 3] = True
        assert torch.equal(b, expect)
    # centres never in the first 1/8 of the rows, so a box can touch the bottom border but
    # reaches the top one only if it is large enough
    assert box[:, -1, :].any() and cy.min() >= 1


def test_unimatch_boxes_like_the_worker_sampler():
    g = torch.Generator().manual_seed(0)
    assert not unimatch_boxes(16, 32, p=0.0, generator=g).any()
    boxes = unimatch_boxes(400, 32, p=1.0, generator=g)
    area = boxes.sum((1, 2)).float()
    assert (area > 0).all()
    for b in boxes[:50]:  # each is one filled rectangle
        ys, xs = b.nonzero(as_tuple=True)
        assert b[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    random.seed(0)
    worker = torch.stack([cutmix_box(32, p=1.0) for _ in range(400)]).sum((1, 2)).float()
    # same area distribution (means agree within a few standard errors)
    assert area.mean().item() == pytest.approx(worker.mean().item(), rel=0.1)
    half = unimatch_boxes(2000, 16, p=0.5, generator=g).flatten(1).any(1).float().mean()
    assert half.item() == pytest.approx(0.5, abs=0.05)


def test_hardness_partners_pair_the_kth_hardest_with_the_kth_easiest():
    # hardest to easiest: 1 (0.1), 3 (0.3), 2 (0.5), 0 (0.9) -> pairs 1-0 and 3-2
    assert hardness_partners(torch.tensor([0.9, 0.1, 0.5, 0.3])).tolist() == [1, 0, 3, 2]
    # odd batch: the median image is its own partner
    assert hardness_partners(torch.tensor([0.2, 0.8, 0.5])).tolist() == [1, 0, 2]
    # all equally easy (or hard): ties keep batch order, so the batch is paired end to end
    assert hardness_partners(torch.full((4,), 1.0)).tolist() == [3, 2, 1, 0]
    assert hardness_partners(torch.zeros(4)).tolist() == [3, 2, 1, 0]


def test_hard_cutmix_trigger_probability_is_the_mean_easiness():
    g = torch.Generator().manual_seed(0)
    assert all(hard_cutmix_triggered(torch.ones(4), g) for _ in range(200))
    assert not any(hard_cutmix_triggered(torch.zeros(4), g) for _ in range(200))
    e = torch.tensor([0.1, 0.5, 0.3, 0.3])  # mean 0.3
    rate = sum(hard_cutmix_triggered(e, g) for _ in range(4000)) / 4000
    assert rate == pytest.approx(0.3, abs=0.03)


def two_images():
    """Image 0 all 0 with label 0, image 1 all 1 with label 1; image 1's pixel 2 is padding."""
    return Mixed(
        torch.stack((torch.zeros(3, 1, 4), torch.ones(3, 1, 4))),
        torch.tensor([[[0, 0, 0, 0]], [[1, 1, 1, 1]]]),
        torch.tensor([[[0.5, 0.5, 0.5, 0.5]], [[0.9, 0.9, 0.9, 0.9]]]),
        torch.tensor([[[0, 0, 0, 0]], [[0, 0, 255, 0]]]),
    )


def test_cutmix_with_pastes_images_labels_confidence_and_ignore_alike():
    batch = two_images()
    before = [t.clone() for t in batch]
    out = cutmix_with(batch, row_boxes([0, 1, 1, 0], [1, 0, 0, 0]), torch.tensor([1, 0]))
    assert rows(out.images) == [[0, 1, 1, 0], [0, 1, 1, 1]]
    assert rows(out.labels) == [[0, 1, 1, 0], [0, 1, 1, 1]]
    assert conf_rows(out, [[0.5, 0.9, 0.9, 0.5], [0.5, 0.9, 0.9, 0.9]])
    assert rows(out.ignore) == [[0, 0, 255, 0], [0, 0, 255, 0]]
    assert all(torch.equal(a, b) for a, b in zip(batch, before, strict=True))


@pytest.mark.parametrize(
    "easiness",
    [torch.ones(6), torch.zeros(6), torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])],
    ids=["all-easy", "all-hard", "mixed"],
)
def test_hard_cutmix_boxes_come_from_the_partner_and_inputs_stay(easiness):
    g = torch.Generator().manual_seed(1)
    n, h, w = 6, 20, 20
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    labels = torch.arange(n).view(n, 1, 1).expand(n, h, w).clone()
    batch = Mixed(images, labels, torch.rand(n, h, w), torch.zeros(n, h, w, dtype=torch.long))
    before = [t.clone() for t in batch]
    partner = hardness_partners(easiness)
    for _ in range(10):
        out = hard_cutmix(batch, easiness, generator=g)
        for i in range(n):
            pasted = out.images[i, 0] != i
            if partner[i] == i:
                assert not pasted.any()
                continue
            assert (out.images[i, 0][pasted] == partner[i]).all()
            assert torch.equal(out.labels[i] != i, pasted)
            assert torch.equal(out.conf[i][pasted], batch.conf[partner[i]][pasted])
            ys, xs = pasted.nonzero(as_tuple=True)
            if len(ys):  # a rectangle at most int(0.9 * 20) = 18 wide
                assert pasted[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
                assert ys.max() - ys.min() < 18 and xs.max() - xs.min() < 18
    assert all(torch.equal(a, b) for a, b in zip(batch, before, strict=True))


def unlabeled_and_labeled():
    unlabeled = Mixed(
        torch.stack((torch.full((3, 1, 4), 10.0), torch.full((3, 1, 4), 11.0))),
        torch.tensor([[[2, 2, 2, 2]], [[3, 3, 3, 3]]]),
        torch.tensor([[[0.6] * 4], [[0.7] * 4]]),
        torch.zeros(2, 1, 4, dtype=torch.long),
    )
    labeled_images = torch.stack((torch.full((3, 1, 4), -1.0), torch.full((3, 1, 4), -2.0)))
    labeled_masks = torch.tensor([[[5, 5, 255, 5]], [[6, 6, 6, 6]]])  # 255: padded in image 0
    return unlabeled, labeled_images, labeled_masks


def test_label_injection_then_cutmix_by_hand():
    u, l_images, l_masks = unlabeled_and_labeled()
    before = [t.clone() for t in (*u, l_images, l_masks)]
    perm = torch.tensor([1, 0])
    labeled_box = row_boxes([1, 1, 1, 0], [0, 1, 1, 1])
    unlabeled_box = row_boxes([0, 1, 1, 0], [1, 1, 0, 0])
    out = inject_then_mix(
        u, l_images, l_masks, perm, labeled_box, torch.tensor([True, True]), unlabeled_box
    )
    # Stage 1: image 0 <- labeled 1 in [0, 3): images [-2, -2, -2, 10], labels [6, 6, 6, 2]
    #          image 1 <- labeled 0 in [1, 4): images [11, -1, -1, -1], labels [3, 5, 255, 5]
    # Stage 2, into the ORIGINAL images: 0 <- stage-1 image 1 in [1, 3); 1 <- stage-1 image 0
    # in [0, 2). Image 0's own labeled box is overwritten by the original image outside [1, 3).
    assert rows(out.images) == [[10, -1, -1, 10], [-2, -2, 11, 11]]
    assert rows(out.labels) == [[2, 5, 0, 2], [6, 6, 3, 3]]
    assert conf_rows(out, [[0.6, 1.0, 1.0, 0.6], [1.0, 1.0, 0.7, 0.7]])
    # the labeled image's padded pixel stays ignored (label 0 there is never read)
    assert rows(out.ignore) == [[0, 0, 255, 0], [0, 0, 0, 0]]
    assert out.labels.dtype == u.labels.dtype and out.ignore.dtype == u.ignore.dtype
    after = (*u, l_images, l_masks)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_no_injection_leaves_a_plain_cutmix_and_empty_boxes_change_nothing():
    u, l_images, l_masks = unlabeled_and_labeled()
    perm = torch.tensor([1, 0])
    labeled_box = row_boxes([1, 1, 1, 1], [1, 1, 1, 1])
    unlabeled_box = row_boxes([0, 0, 0, 0], [0, 0, 1, 1])
    out = inject_then_mix(
        u, l_images, l_masks, perm, labeled_box, torch.tensor([False, True]), unlabeled_box
    )
    assert rows(out.images) == [[10, 10, 10, 10], [11, 11, 10, 10]]
    assert rows(out.labels) == [[2, 2, 2, 2], [3, 3, 2, 2]]
    assert conf_rows(out, [[0.6] * 4, [0.7, 0.7, 0.6, 0.6]])
    # lambda = 1 for both boxes: side sqrt(1 - 1) = 0, nothing is pasted
    empty = row_boxes([0, 0, 0, 0], [0, 0, 0, 0])
    out = inject_then_mix(u, l_images, l_masks, perm, empty, torch.tensor([True, True]), empty)
    assert all(torch.equal(a, b) for a, b in zip(out, u, strict=True))


def test_beta_draws_have_the_beta_moments():
    g = torch.Generator().manual_seed(0)
    for a, b in ((8, 2), (4, 4)):
        draws = torch.tensor([beta_whole(a, b, g) for _ in range(4000)])
        mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
        assert draws.mean().item() == pytest.approx(mean, abs=0.01)
        assert draws.var().item() == pytest.approx(var, rel=0.1)


def random_batches(n=4, h=24, w=24):
    g = torch.Generator().manual_seed(7)
    u = Mixed(
        torch.rand(n, 3, h, w, generator=g),
        torch.randint(0, 3, (n, h, w), generator=g),
        torch.rand(n, h, w, generator=g) * 0.9,  # never 1: a confidence of 1 means "labeled"
        torch.zeros(n, h, w, dtype=torch.long),
    )
    l_images = torch.full((n, 3, h, w), -100.0)
    l_masks = torch.randint(3, 6, (n, h, w), generator=g)
    l_masks[:, :, -5:] = 255  # padded strip
    return u, l_images, l_masks


def test_label_injecting_cutmix_carries_ground_truth_with_confidence_one():
    u, l_images, l_masks = random_batches()
    before = [t.clone() for t in (*u, l_images, l_masks)]
    g = torch.Generator().manual_seed(0)
    seen_labeled = seen_padding = 0
    for _ in range(30):
        out = label_injecting_cutmix(u, l_images, l_masks, torch.zeros(4), generator=g)
        from_labeled = out.images[:, 0] == -100
        assert torch.equal(from_labeled, out.conf == 1)
        padded = from_labeled & (out.ignore == 255)
        assert (out.labels[from_labeled & ~padded] >= 3).all()  # the labeled classes 3..5
        assert (out.labels[padded] == 0).all()
        assert not (out.ignore[~from_labeled] == 255).any()
        seen_labeled += int(from_labeled.sum())
        seen_padding += int(padded.sum())
    assert seen_labeled > 0 and seen_padding > 0
    after = (*u, l_images, l_masks)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_fully_reliable_images_receive_no_labeled_pixels():
    u, l_images, l_masks = random_batches()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        out = label_injecting_cutmix(u, l_images, l_masks, torch.ones(4), generator=g)
        assert not (out.images == -100).any()
        assert not (out.conf == 1).any()


def test_label_injecting_cutmix_needs_matching_batches():
    u, l_images, l_masks = random_batches()
    with pytest.raises(ValueError, match="same shape"):
        label_injecting_cutmix(u, l_images[:2], l_masks[:2], torch.zeros(4))
