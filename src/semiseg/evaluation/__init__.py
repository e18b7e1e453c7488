"""Validation: inference modes and the mIoU."""

from semiseg.evaluation.inference import MODES, center_crop, predict
from semiseg.evaluation.metrics import confusion_matrix, iou_per_class, mean_iou

__all__ = ["MODES", "center_crop", "confusion_matrix", "iou_per_class", "mean_iou", "predict"]
