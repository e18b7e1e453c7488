"""The task objects: which validation wrote best.ckpt, and the results.json keys built from it,
on validation histories worked by hand."""

import pytest
import torch

from semiseg.tasks import build_task
from semiseg.tasks.base import percent_or_none

CLASSES = ["background", "a", "b"]


def task(name, **evaluation):
    return build_task(CLASSES, {"task": name, "mode": "original", **evaluation}, crop_size=8)


def test_volume_task_reports_the_scores_of_the_dice_selected_validation():
    history = [
        {"step": 2, "miou": 30.0, "mean_dice": 50.0},
        {"step": 4, "miou": 40.0, "mean_dice": 45.0},  # the best mIoU, not the best Dice
        {"step": 6, "miou": 35.0, "mean_dice": 50.0},  # ties the best Dice: the first one stays
    ]
    results = task("volume").train_results(history, {"per_class_iou": {}})
    assert results["selection"] == "mean_dice"
    assert (results["best_val_score"], results["best_step"]) == (50.0, 2)
    assert results["best_val_miou"] == 30.0  # best.ckpt's mIoU
    assert results["best_val_mean_dice"] == 50.0 and results["val_mean_dice"] == 50.0
    assert results["val_miou"] == 35.0


def test_change_task_selects_by_changed_iou():
    keys = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "overall_accuracy": 90.0}
    history = [
        {"step": 1, "miou": 60.0, "iou_changed": 20.0, "iou_unchanged": 95.0, **keys},
        {"step": 2, "miou": 55.0, "iou_changed": 25.0, "iou_unchanged": 90.0, **keys},
    ]
    results = task("change_detection").train_results(history, {})
    assert results["selection"] == "iou_changed" and results["best_step"] == 2
    assert results["best_val_score"] == results["best_val_iou_changed"] == 25.0
    assert results["best_val_miou"] == 55.0
    assert results["best_change_scores"]["step"] == 2


def test_segmentation_scores_from_a_confusion_matrix():
    # rows: ground truth, columns: prediction
    confusion = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    seg = task("segmentation", absent_class="skip")
    scores = seg.scores(confusion)
    # IoU: background 8 / (10 + 9 - 8) = 8/11, a 3 / (4 + 5 - 3) = 1/2, b absent
    assert scores["per_class_iou"] == {"background": 72.73, "a": 50.0, "b": None}
    assert scores["miou"] == pytest.approx(100 * (8 / 11 + 0.5) / 2)
    zero = task("segmentation", absent_class="zero").scores(confusion)
    assert zero["miou"] == pytest.approx(100 * (8 / 11 + 0.5) / 3)


def test_unknown_task_is_one_line():
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.task='pixels' is unknown: use one of"):
        task("pixels")


def test_percent_or_none():
    assert percent_or_none(0.12345) == 12.35 and percent_or_none(float("nan")) is None
