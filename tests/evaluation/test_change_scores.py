"""Change-detection scores against hand-worked counts, the edge cases, and torchmetrics."""

import pytest
import torch
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from semiseg.evaluation.change import change_percent, change_scores
from semiseg.evaluation.metrics import confusion_matrix


def scores_of(pred, gt):
    return change_scores(confusion_matrix(torch.tensor(pred), torch.tensor(gt), 2))


def test_hand_worked_counts_with_an_ignored_pixel():
    gt = [[1, 1, 0, 0], [1, 0, 0, 255]]
    pred = [[1, 0, 1, 0], [1, 0, 0, 1]]  # TP 2, FN 1, FP 1, TN 3; the 255 pixel not counted
    s = scores_of(pred, gt)
    assert s["iou_changed"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["overall_accuracy"] == pytest.approx(5 / 7)
    assert s["iou_unchanged"] == pytest.approx(3 / 5)


def test_no_change_anywhere_scores_zero_but_full_accuracy():
    # the public code's IoU: 0 / (0 + 1e-10) = 0 for a class in neither prediction nor gt
    s = scores_of([[0, 0], [0, 0]], [[0, 0], [0, 0]])
    assert s["iou_changed"] == s["f1"] == s["precision"] == s["recall"] == 0.0
    assert s["overall_accuracy"] == 1.0 and s["iou_unchanged"] == 1.0


def test_change_predicted_where_there_is_none():
    s = scores_of([[1, 0], [0, 0]], [[0, 0], [0, 0]])  # FP 1, TN 3
    assert s["iou_changed"] == s["precision"] == s["f1"] == 0.0
    assert s["recall"] == 0.0  # no changed pixel in gt: 0 / 0 -> 0
    assert s["overall_accuracy"] == pytest.approx(0.75)


def test_no_change_predicted():
    s = scores_of([[0, 0], [0, 0]], [[1, 1], [0, 0]])  # FN 2, TN 2
    assert s["precision"] == 0.0  # nothing predicted changed: 0 / 0 -> 0
    assert s["recall"] == s["iou_changed"] == s["f1"] == 0.0
    assert s["overall_accuracy"] == pytest.approx(0.5)


def test_percent_rounds_to_two_decimals():
    confusion = torch.tensor([[3, 1], [1, 2]])
    assert change_percent(confusion)["f1"] == 66.67
    assert change_percent(confusion)["overall_accuracy"] == 71.43


def test_refuses_more_than_two_classes():
    with pytest.raises(ValueError, match="2 classes"):
        change_scores(torch.zeros(3, 3, dtype=torch.long))


def test_agrees_with_torchmetrics_binary_scores():
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(4, 16, 16, generator=g) < 0.2).long()
    gt[0, :2] = 255
    pred = (torch.rand(4, 16, 16, generator=g) < 0.3).long()
    s = change_scores(confusion_matrix(pred, gt, 2))
    for key, metric in (
        ("iou_changed", BinaryJaccardIndex(ignore_index=255)),
        ("f1", BinaryF1Score(ignore_index=255)),
        ("precision", BinaryPrecision(ignore_index=255)),
        ("recall", BinaryRecall(ignore_index=255)),
        ("overall_accuracy", BinaryAccuracy(ignore_index=255)),
    ):
        assert s[key] == pytest.approx(float(metric(pred, gt)), abs=1e-6), key
