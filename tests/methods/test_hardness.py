"""iMAS's easiness and AugSeg's reliability against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from semiseg.methods.hardness import (
    blend_views,
    class_weighted_iou,
    confident_ratio,
    easiness,
    easiness_weighted_loss,
    reliability,
)

# Reference (teacher) and prediction (student) maps, 4 classes, one 2x4 image.
# Reference counts: c0 3, c1 4, c2 1, c3 0. Prediction counts: c0 2, c1 2, c2 3, c3 1.
REF = torch.tensor([[[1, 1, 1, 0], [1, 2, 0, 0]]])
PRED = torch.tensor([[[1, 1, 2, 0], [2, 2, 0, 3]]])
# IoU: c1 = 2 / (4 + 2 - 2) = 1/2; c2 = 1 / (1 + 3 - 1) = 1/3; c3 = 0 (only in PRED).
WIOU_PRED_VS_REF = 4 / 5 * 1 / 2 + 1 / 5 * 1 / 3  # weights from REF: c1 4/5, c2 1/5, c3 0
WIOU_REF_VS_PRED = 2 / 6 * 1 / 2 + 3 / 6 * 1 / 3 + 1 / 6 * 0  # from PRED: c1 2/6, c2 3/6, c3 1/6


def test_class_weighted_iou_by_hand_with_a_class_absent_from_the_reference():
    assert class_weighted_iou(PRED, REF, 4).item() == pytest.approx(WIOU_PRED_VS_REF)  # 7/15
    assert class_weighted_iou(REF, PRED, 4).item() == pytest.approx(WIOU_REF_VS_PRED)  # 1/3
    # a class in neither map changes nothing
    assert class_weighted_iou(PRED, REF, 6).item() == pytest.approx(WIOU_PRED_VS_REF)


def test_class_weighted_iou_background_only_reference_is_zero_even_when_they_agree():
    background = torch.zeros(1, 2, 4, dtype=torch.long)
    assert class_weighted_iou(background, background, 3).item() == 0.0
    assert class_weighted_iou(PRED, background, 4).item() == 0.0
    # perfect agreement on a foreground class is 1
    assert class_weighted_iou(REF, REF, 4).item() == pytest.approx(1.0)


def public_weighted_iou(pred: np.ndarray, ref: np.ndarray, c: int) -> float:
    """Our transcription of iMAS's meanIOU.evaluate(flag_cls_weight, flag_ignore_background)."""
    hist = np.bincount(c * ref.flatten() + pred.flatten(), minlength=c * c).reshape(c, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        weight = np.array([(ref == k).sum() for k in range(c)], dtype=float)
        weight[0] = 0
        weight = weight / weight.sum()
        return float(np.nansum(iou * weight))


def test_class_weighted_iou_matches_the_public_formula_per_image():
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 5, (6, 7, 9), generator=g)
    pred = torch.where(
        torch.rand(6, 7, 9, generator=g) < 0.6, ref, torch.randint(0, 5, (6, 7, 9), generator=g)
    )
    ref[2] = 0  # background only
    ref[3] = ref[3].clamp(max=2)  # classes 3, 4 absent from the reference
    ours = class_weighted_iou(pred, ref, 5)
    for i in range(6):
        assert ours[i].item() == pytest.approx(
            public_weighted_iou(pred[i].numpy(), ref[i].numpy(), 5)
        )


def test_confident_ratio_counts_ties_at_the_threshold():
    conf = torch.tensor([[[0.95, 0.9499], [0.96, 0.5]]])
    assert confident_ratio(conf, 0.95).tolist() == [0.5]


def test_easiness_by_hand():
    conf_t = torch.tensor([[[0.99, 0.99, 0.99, 0.5], [0.99, 0.99, 0.99, 0.95]]])  # r_t = 7/8
    conf_s = torch.tensor([[[0.99, 0.2, 0.99, 0.5], [0.99, 0.3, 0.99, 0.94]]])  # r_s = 4/8
    e = easiness(conf_s, PRED, conf_t, REF, num_classes=4, tau=0.95)
    expected = 0.5 * (WIOU_PRED_VS_REF * 7 / 8 + WIOU_REF_VS_PRED * 4 / 8)
    assert e.item() == pytest.approx(expected)  # 0.5 * (7/15 * 7/8 + 1/3 * 1/2) = 0.2875


def test_easiness_per_image_and_extremes():
    ones = torch.ones(2, 2, 4)
    labels = torch.stack((REF[0], torch.zeros(2, 4, dtype=torch.long)))
    # identical confident maps: 1 for a foreground image, 0 for an all-background one
    assert easiness(ones, labels, ones, labels, 4, 0.95).tolist() == [1.0, 0.0]
    # nobody confident: 0
    assert easiness(ones * 0.5, labels, ones * 0.5, labels, 4, 0.95).tolist() == [0.0, 0.0]


def test_blend_goes_from_the_weak_view_at_e_0_to_the_strong_view_at_e_1():
    strong = torch.full((3, 3, 2, 2), 4.0)
    weak = torch.full((3, 3, 2, 2), -4.0)
    out = blend_views(strong, weak, torch.tensor([0.0, 0.25, 1.0]))
    assert out[0].unique().tolist() == [-4.0]
    assert out[1].unique().tolist() == [-2.0]  # 0.25 * 4 + 0.75 * -4
    assert out[2].unique().tolist() == [4.0]


def test_easiness_weighted_loss_by_hand():
    logits = torch.zeros(2, 2, 1, 4, dtype=torch.float64)  # CE = ln 2 at every pixel
    labels = torch.tensor([[[0, 1, 0, 1]], [[1, 1, 0, 0]]])
    conf = torch.tensor([[[0.95, 0.5, 0.99, 0.99]], [[0.99] * 4]], dtype=torch.float64)
    ignore = torch.tensor([[[0, 0, 0, 255]], [[0, 0, 0, 0]]])
    e = torch.tensor([0.5, 0.25], dtype=torch.float64)
    # the public mean over all H x W: image 0 keeps pixels 0 and 2 of 4 (the padded pixel 3
    # adds nothing but counts) -> 2 ln2 / 4; image 1: ln 2
    loss = easiness_weighted_loss(logits, labels, conf, ignore, e, tau=0.95)
    assert loss.item() == pytest.approx((0.5 * 2 / 4 + 0.25 * 1) / 2 * math.log(2))
    # iMAS's default passes no padding mask (the public code has none): pixel 3 is trained too
    public = easiness_weighted_loss(logits, labels, conf, torch.zeros_like(ignore), e, 0.95)
    assert public.item() == pytest.approx((0.5 * 3 / 4 + 0.25 * 1) / 2 * math.log(2))
    # unlabeled_padding=ignore: padded pixels out of the count too -> 2 ln2 / 3
    masked = easiness_weighted_loss(logits, labels, conf, ignore, e, 0.95, over_all_pixels=False)
    assert masked.item() == pytest.approx((0.5 * 2 / 3 + 0.25 * 1) / 2 * math.log(2))


def test_easiness_weighted_loss_gradient_reaches_only_confident_pixels():
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    loss = easiness_weighted_loss(
        logits,
        torch.tensor([[[0, 1]]]),
        torch.tensor([[[0.99, 0.1]]]),
        torch.zeros(1, 1, 2, dtype=torch.long),
        torch.tensor([1.0]),
        0.95,
    )
    loss.backward()
    assert logits.grad[0, :, 0, 0].abs().sum() > 0
    assert logits.grad[0, :, 0, 1].abs().sum() == 0


def two_class_logits(p_class0: list[float]) -> torch.Tensor:
    p = torch.tensor(p_class0, dtype=torch.float64)
    return torch.stack((p.log(), (1 - p).log()))[None, :, None, :]


def test_reliability_by_hand():
    def term(p):  # (1 - H / ln 2) * max p, two classes
        h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        return (1 - h / math.log(2)) * max(p, 1 - p)

    logits = two_class_logits([0.5, 0.8, 0.2, 0.99])
    expected = (0.0 + term(0.8) + term(0.2) + term(0.99)) / 4  # term(0.8) = 0.2224...
    assert reliability(logits).item() == pytest.approx(expected, abs=1e-8)


def test_reliability_per_image_extremes_and_class_count():
    uniform = torch.zeros(1, 5, 3, 3)  # H = ln 5: reliability 0
    certain = torch.zeros(1, 5, 3, 3)
    certain[:, 2] = 50.0  # p = 1: reliability 1
    out = reliability(torch.cat((uniform, certain)))
    assert out[0].item() == pytest.approx(0.0, abs=1e-6)
    assert out[1].item() == pytest.approx(1.0, abs=1e-6)
