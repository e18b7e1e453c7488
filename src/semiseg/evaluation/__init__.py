"""Validation: inference modes, the mIoU and the other scores of a confusion matrix."""

from semiseg.evaluation.inference import MODES, center_crop, predict
from semiseg.evaluation.metrics import (
    class_mean,
    cohen_kappa,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    precision_per_class,
    recall_per_class,
)

__all__ = [
    "MODES",
    "center_crop",
    "class_mean",
    "cohen_kappa",
    "confusion_matrix",
    "dice_per_class",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "precision_per_class",
    "recall_per_class",
    "predict",
]
