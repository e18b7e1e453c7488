import math

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from semiseg.evaluation.metrics import confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1, 255], [2, 1, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    # kept pixels (gt, pred): (0,0) (0,1) (1,1) (2,2) (1,2) (0,0)
    expected = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    result = confusion_matrix(pred, target, num_classes=3)
    assert result.dtype == torch.long
    assert torch.equal(result, expected)


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), num_classes=3)


def test_iou_by_hand():
    # rows gt, cols pred
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    # class 0: 5 / (6 + 7 - 5) = 5/8; class 1: 3 / (5 + 4 - 3) = 1/2; class 2 absent
    iou = iou_per_class(confusion)
    assert iou[0].item() == pytest.approx(5 / 8)
    assert iou[1].item() == pytest.approx(1 / 2)
    assert math.isnan(iou[2].item())
    assert mean_iou(confusion, absent="zero") == pytest.approx((5 / 8 + 1 / 2 + 0) / 3)
    assert mean_iou(confusion, absent="skip") == pytest.approx((5 / 8 + 1 / 2) / 2)


def test_class_only_in_prediction_counts_as_zero():
    # class 2 never in gt but predicted twice: union 2, IoU 0 under both conventions
    confusion = torch.tensor([[4, 0, 2], [0, 4, 0], [0, 0, 0]])
    assert iou_per_class(confusion)[2].item() == 0.0
    assert mean_iou(confusion, absent="skip") == pytest.approx((4 / 6 + 1 + 0) / 3)


def test_unknown_convention():
    with pytest.raises(ValueError, match="skip"):
        mean_iou(torch.eye(2), absent="percent")


def test_agrees_with_torchmetrics():
    torch.manual_seed(0)
    target = torch.randint(0, 6, (3, 40, 50))
    target[torch.rand(target.shape) < 0.1] = 255
    pred = torch.randint(0, 6, (3, 40, 50))
    reference = MulticlassConfusionMatrix(num_classes=6, ignore_index=255)(pred, target)
    assert torch.equal(confusion_matrix(pred, target, num_classes=6), reference.long())
