"""The change-detection scores of a 2-class confusion matrix (0 unchanged, 1 changed).

The public UniMatch remote-sensing code (supervised.py `evaluate`, util/utils.py
`intersectionAndUnion`) sums intersections and unions over the whole test set, reports the IoU of
each class in percent (intersection / (union + 1e-10), so a class in neither prediction nor
ground truth scores 0) and the overall accuracy (correct pixels / all pixels), and selects the
best checkpoint by the changed-class IoU. Its tables give the changed IoU and the overall
accuracy. F1, precision and recall of the changed class are added here, from the same counts:

    IoU = TP / (TP + FP + FN)    F1 = 2 TP / (2 TP + FP + FN)
    precision = TP / (TP + FP)   recall = TP / (TP + FN)    OA = (TP + TN) / all

Each is 0 where its denominator is 0 (no change in prediction nor ground truth; nothing
predicted changed; nothing changed), as the public IoU and torchmetrics' zero_division=0.
Pixels labelled 255 are not counted (the confusion matrix skips them); the public overall
accuracy divides by every pixel, 255 included, which is the same on its test masks (0/255 only,
read as 0/1, so none is 255).
"""

from __future__ import annotations

import torch

KEYS = ("iou_changed", "f1", "precision", "recall", "overall_accuracy", "iou_unchanged")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def change_scores(confusion: torch.Tensor) -> dict[str, float]:
    """The scores above as fractions, from confusion[gt, pred] of shape (2, 2)."""
    if tuple(confusion.shape) != (2, 2):
        raise ValueError(f"change detection has 2 classes, got a {tuple(confusion.shape)} matrix")
    c = confusion.double()
    tn, fp, fn, tp = (float(c[0, 0]), float(c[0, 1]), float(c[1, 0]), float(c[1, 1]))
    return {
        "iou_changed": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "overall_accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "iou_unchanged": _ratio(tn, tn + fp + fn),
    }


def change_percent(confusion: torch.Tensor) -> dict[str, float]:
    """`change_scores` in percent, rounded to 2 decimals (results.json, the public tables)."""
    return {k: round(100.0 * v, 2) for k, v in change_scores(confusion).items()}


CONVENTION = (
    "changed class (1) against unchanged (0), pixels summed over the evaluated pairs; IoU, F1, "
    "precision, recall of the changed class, overall accuracy over all counted pixels; 0 where "
    "a denominator is 0 (the public code's IoU); best checkpoint by changed IoU"
)
