"""Per-volume evaluation of 3D scans with a 2D network (`eval.mode=volume`, ACDC).

As the public UniMatch medical code: each slice of a volume is resized (bilinear) to
crop_size x crop_size, the network predicts all slices as one batch, the logits are resized back
(bilinear) to the slice size and the argmax is the prediction. Dice is taken per volume and per
class, averaged over the volumes per class; the mean Dice is the mean over the foreground classes
(class 0, the background, is left out of it), all in percent.

A class in neither the prediction nor the ground truth of a volume has no Dice (0 / 0; the
public code would divide by zero, every ACDC volume holding all classes). `absent` decides:
"skip" (default) leaves that volume out of the class's mean, "one" counts it as a perfect 1,
"zero" as 0 (medpy's `dc`). A class absent from the ground truth but predicted has Dice 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ABSENT = ("skip", "one", "zero")


def dice_per_class(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, absent: str = "skip"
) -> torch.Tensor:
    """Dice of each class (background included) over all voxels of one volume, float64 (C,);
    NaN where the class is in neither (absent="skip"). Voxels labelled 255 are ignored."""
    if absent not in ABSENT:
        raise ValueError(f"absent must be one of {', '.join(ABSENT)}, not {absent!r}")
    pred, target = pred.reshape(-1), target.reshape(-1)
    keep = target != 255
    pred, target = pred[keep].long(), target[keep].long()
    if target.numel() and int(target.max()) >= num_classes:
        raise ValueError(f"labels outside [0, {num_classes}) other than 255")
    inter = torch.bincount(target[pred == target], minlength=num_classes).double()
    sizes = (
        torch.bincount(pred, minlength=num_classes) + torch.bincount(target, minlength=num_classes)
    ).double()
    empty = {"skip": math.nan, "one": 1.0, "zero": 0.0}[absent]
    return torch.where(sizes > 0, 2 * inter / sizes.clamp(min=1), empty)


def summarise(per_volume: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per-class mean over volumes, background included, NaN where no volume counts; the mean
    over the foreground classes that have a value) from (V, C) per-volume Dice fractions."""
    counted = ~per_volume.isnan()
    sums = per_volume.nan_to_num(0.0).sum(0)
    per_class = torch.where(
        counted.sum(0) > 0, sums / counted.sum(0).clamp(min=1), torch.nan
    ).double()
    foreground = per_class[1:]
    foreground = foreground[~foreground.isnan()]
    mean = foreground.mean().item() if foreground.numel() else math.nan
    return per_class, mean


@torch.no_grad()
def predict_volume(model, volume: torch.Tensor, size: int, batch: int = 0) -> torch.Tensor:
    """Class probabilities (D, C, H, W) of a volume (D, H, W) or (1, D, H, W): every slice
    resized to size x size, predicted (`batch` slices at a time; 0: all at once, as the public
    code), the logits resized back; the model is in eval mode."""
    if volume.dim() == 4:
        volume = volume[0]
    h, w = volume.shape[-2:]
    slices = volume.unsqueeze(1).float()
    slices = F.interpolate(slices, (size, size), mode="bilinear", align_corners=False)
    step = batch or slices.shape[0]
    out = []
    for start in range(0, slices.shape[0], step):
        logits = model(slices[start : start + step]).float()
        out.append(F.interpolate(logits, (h, w), mode="bilinear", align_corners=False))
    return torch.cat(out).softmax(dim=1)
