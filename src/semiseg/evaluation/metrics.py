"""Confusion matrix, IoU per class and mIoU; Dice, precision, recall, accuracy, kappa.

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


# Scores besides the IoU, all from the same confusion[gt, pred] and all fractions.
# Per class: NaN where the class is in neither gt nor prediction (as for the IoU). A class in
# only one of them has a zero numerator; where its denominator is zero too (the precision of a
# class never predicted, the recall of a class absent from gt) the value is 0, as torchmetrics'
# and scikit-learn's zero_division=0. Means follow the mIoU's `absent` convention.


def _per_class(numerator: torch.Tensor, denominator: torch.Tensor, confusion) -> torch.Tensor:
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    value = numerator / denominator.clamp(min=1e-12)
    return torch.where(present, torch.where(denominator > 0, value, 0.0), torch.nan)


def dice_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Dice = F1 = 2 TP / (2 TP + FP + FN) per class."""
    confusion = confusion.double()
    tp = confusion.diag()
    return _per_class(2 * tp, confusion.sum(0) + confusion.sum(1), confusion)


def precision_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """TP / (TP + FP): of the pixels predicted as the class, the share that are."""
    confusion = confusion.double()
    return _per_class(confusion.diag(), confusion.sum(0), confusion)


def recall_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """TP / (TP + FN): of the class's pixels, the share predicted as it."""
    confusion = confusion.double()
    return _per_class(confusion.diag(), confusion.sum(1), confusion)


def class_mean(values: torch.Tensor, absent: str = "zero") -> float:
    """The mean of per-class values with NaN for absent classes, as `mean_iou` takes it."""
    if absent == "zero":
        return values.nan_to_num(0.0).mean().item()
    if absent == "skip":
        return values.nanmean().item()
    raise ValueError(f"absent must be 'zero' or 'skip', not {absent!r}")


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Correct pixels / all counted pixels (NaN when none was counted)."""
    confusion = confusion.double()
    total = confusion.sum().item()
    return confusion.diag().sum().item() / total if total else float("nan")


def cohen_kappa(confusion: torch.Tensor) -> float:
    """(p_o - p_e) / (1 - p_e): the observed agreement p_o (pixel accuracy) against the
    agreement p_e of prediction and gt drawn independently with their class frequencies.
    NaN when p_e = 1 (prediction and gt one and the same single class) or no pixel counted."""
    confusion = confusion.double()
    total = confusion.sum().item()
    if not total:
        return float("nan")
    observed = confusion.diag().sum().item() / total
    expected = (confusion.sum(1) * confusion.sum(0)).sum().item() / total**2
    return (observed - expected) / (1 - expected) if expected < 1 else float("nan")
