"""Confusion matrix, IoU per class and mIoU.

Counts accumulate over the whole set (sum the per-image confusion matrices), then IoU is
taken per class, as the reference does. All IoU values are fractions in [0, 1], not percent.
"""

import torch


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Count pixels: result[gt, pred], shape (C, C), long; pixels with ignore_index are skipped.

    Same orientation as torchmetrics' MulticlassConfusionMatrix (rows are the target). A
    bincount without weights counts integers, so it stays exact and is allowed under
    torch.use_deterministic_algorithms.
    """
    pred, target = pred.reshape(-1), target.reshape(-1)
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    if counts.numel() != num_classes * num_classes:
        raise ValueError(
            f"labels outside [0, {num_classes}) other than ignore_index={ignore_index}"
        )
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class from confusion[gt, pred]; NaN where a class is in neither gt nor pred."""
    confusion = confusion.double()
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.nan)


def mean_iou(confusion: torch.Tensor, absent: str = "zero") -> float:
    """Mean IoU as a fraction in [0, 1].

    absent="zero": a class in neither gt nor pred counts as IoU 0 and the mean is over all
    classes (the UniMatch reference). absent="skip": such classes are left out (torchmetrics'
    macro average). On a full validation set, where every class occurs, the two agree.
    """
    iou = iou_per_class(confusion)
    if absent == "zero":
        return iou.nan_to_num(0.0).mean().item()
    if absent == "skip":
        return iou.nanmean().item()
    raise ValueError(f"absent must be 'zero' or 'skip', not {absent!r}")


def subset_mious(
    per_class: dict[str, float | None], subsets: dict[str, list[str]], absent: str = "zero"
) -> dict[str, float | None]:
    """The mIoU over named class subsets (SYNTHIA -> Cityscapes: miou16, miou13), in percent,
    from per-class IoUs in percent (None: a class in neither gt nor prediction, which counts 0
    under absent="zero" and is left out under "skip")."""
    out = {}
    for name, classes in subsets.items():
        values = [per_class.get(c) for c in classes]
        if absent == "zero":
            values = [0.0 if v is None else v for v in values]
        else:
            values = [v for v in values if v is not None]
        out[name] = round(sum(values) / len(values), 2) if values else None
    return out
