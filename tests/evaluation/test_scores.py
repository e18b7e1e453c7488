"""Dice, precision, recall, pixel accuracy and Cohen's kappa from a confusion matrix."""

import csv
import math

import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_cohen_kappa,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from semiseg.evaluation.metrics import (
    class_mean,
    cohen_kappa,
    confusion_matrix,
    dice_per_class,
    pixel_accuracy,
    precision_per_class,
    recall_per_class,
)
from semiseg.evaluation.reports import plot_confusion, row_normalised, scores, write_confusion_csv

# rows gt, columns pred. Class 2: in neither gt nor prediction. Class 3: predicted twice, never
# in gt. Class 4: once in gt, never predicted.
CONFUSION = torch.tensor(
    [
        [5, 1, 0, 2, 0],
        [2, 3, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ]
)
# gt counts (rows) 8, 5, 0, 0, 1; predicted counts (columns) 8, 4, 0, 2, 0; 14 pixels, 8 right.
NAN = math.nan


def assert_values(result: torch.Tensor, expected: list[float]):
    assert len(result) == len(expected)
    for got, want in zip(result.tolist(), expected, strict=True):
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want)


def test_dice_by_hand():
    # 2 TP / (gt + pred): 10/16, 6/9, absent, 0/2, 0/1
    assert_values(dice_per_class(CONFUSION), [5 / 8, 2 / 3, NAN, 0.0, 0.0])


def test_precision_by_hand():
    # TP / pred: 5/8, 3/4, absent, 0/2, never predicted but in gt: 0
    assert_values(precision_per_class(CONFUSION), [5 / 8, 3 / 4, NAN, 0.0, 0.0])


def test_recall_by_hand():
    # TP / gt: 5/8, 3/5, absent, never in gt but predicted: 0, 0/1
    assert_values(recall_per_class(CONFUSION), [5 / 8, 3 / 5, NAN, 0.0, 0.0])


def test_class_means_follow_the_miou_convention():
    dice = dice_per_class(CONFUSION)
    assert class_mean(dice, "zero") == pytest.approx((5 / 8 + 2 / 3) / 5)  # 31/120
    assert class_mean(dice, "skip") == pytest.approx((5 / 8 + 2 / 3) / 4)  # 31/96
    with pytest.raises(ValueError, match="skip"):
        class_mean(dice, "percent")


def test_pixel_accuracy_by_hand():
    assert pixel_accuracy(CONFUSION) == pytest.approx(8 / 14)
    assert math.isnan(pixel_accuracy(torch.zeros(3, 3, dtype=torch.long)))


def test_cohen_kappa_by_hand():
    # p_o = 8/14 = 4/7; p_e = (8*8 + 5*4 + 0*0 + 0*2 + 1*0) / 14^2 = 84/196 = 3/7
    # kappa = (4/7 - 3/7) / (1 - 3/7) = 1/4
    assert cohen_kappa(CONFUSION) == pytest.approx(1 / 4)
    assert cohen_kappa(torch.tensor([[3, 0], [0, 5]])) == pytest.approx(1.0)
    # independent draws: p_o = p_e = 1/2
    assert cohen_kappa(torch.tensor([[1, 1], [1, 1]])) == pytest.approx(0.0)
    assert math.isnan(cohen_kappa(torch.tensor([[4, 0], [0, 0]])))  # one class only: undefined


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics(seed):
    torch.manual_seed(seed)
    classes = 7  # labels 0..5 only: class 6 is in neither; class 5 only in the prediction
    target = torch.randint(0, 5, (3, 40, 50))
    target[torch.rand(target.shape) < 0.1] = 255
    pred = torch.randint(0, 6, (3, 40, 50))
    confusion = confusion_matrix(pred, target, classes)
    args = {"num_classes": classes, "ignore_index": 255}
    pairs = [
        (dice_per_class, multiclass_f1_score),
        (precision_per_class, multiclass_precision),
        (recall_per_class, multiclass_recall),
    ]
    for ours, theirs in pairs:
        per_class = ours(confusion)
        reference = theirs(pred, target, average="none", **args).double()
        assert math.isnan(per_class[6])
        assert torch.allclose(per_class[:6], reference[:6], atol=1e-6), ours.__name__
        # torchmetrics' macro average leaves out classes in neither gt nor prediction
        macro = theirs(pred, target, average="macro", **args).item()
        assert class_mean(per_class, "skip") == pytest.approx(macro, abs=1e-6), ours.__name__
    accuracy = multiclass_accuracy(pred, target, average="micro", **args).item()
    assert pixel_accuracy(confusion) == pytest.approx(accuracy, abs=1e-6)
    kappa = multiclass_cohen_kappa(pred, target, **args).item()
    assert cohen_kappa(confusion) == pytest.approx(kappa, abs=1e-5)


def test_results_scores_csv_and_plot(tmp_path):
    names = ["a", "b", "c", "d", "e"]
    result = scores(CONFUSION, names, "zero")
    assert result["per_class_dice"] == {"a": 62.5, "b": 66.67, "c": None, "d": 0.0, "e": 0.0}
    assert result["mean_dice"] == pytest.approx(100 * 31 / 120, abs=0.01)
    assert result["mean_recall"] == pytest.approx(100 * (5 / 8 + 3 / 5) / 5, abs=0.01)
    assert result["pixel_accuracy"] == pytest.approx(100 * 8 / 14, abs=0.01)
    assert result["cohen_kappa"] == 0.25
    write_confusion_csv(tmp_path / "c.csv", CONFUSION, names)
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["gt \\ pred", *names]
    assert rows[1] == ["a", "5", "1", "0", "2", "0"] and len(rows) == 6
    normalised = row_normalised(CONFUSION)
    assert normalised[0].tolist() == [5 / 8, 1 / 8, 0, 2 / 8, 0]
    assert normalised[2].tolist() == [0.0] * 5  # a class absent from gt: an empty row
    plot_confusion(tmp_path / "c.png", CONFUSION, names)
    assert (tmp_path / "c.png").stat().st_size > 1000
