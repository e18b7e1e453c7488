"""What eval.py writes beside the mIoU: the other scores and the confusion matrix (CSV, PNG)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch

from semiseg.evaluation.metrics import (
    class_mean,
    cohen_kappa,
    dice_per_class,
    pixel_accuracy,
    precision_per_class,
    recall_per_class,
)


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else round(100.0 * value, 2)


def scores(confusion: torch.Tensor, class_names: list[str], absent: str = "zero") -> dict:
    """results.json's scores besides the IoU, in percent like the mIoU (Cohen's kappa as a
    fraction in [-1, 1]). A class in neither gt nor prediction is null per class and counts
    as `per_class_iou` does in the means (`absent`: zero or skip)."""
    out = {}
    for name, per_class in (
        ("dice", dice_per_class(confusion)),
        ("precision", precision_per_class(confusion)),
        ("recall", recall_per_class(confusion)),
    ):
        out[f"mean_{name}"] = _percent(class_mean(per_class, absent))
        out[f"per_class_{name}"] = {
            n: _percent(float(v)) for n, v in zip(class_names, per_class, strict=True)
        }
    out["pixel_accuracy"] = _percent(pixel_accuracy(confusion))
    kappa = cohen_kappa(confusion)
    out["cohen_kappa"] = None if math.isnan(kappa) else round(kappa, 4)
    return out


def write_confusion_csv(path: Path, confusion: torch.Tensor, class_names: list[str]) -> None:
    """Pixel counts: one row per ground-truth class, one column per predicted class."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gt \\ pred", *class_names])
        for name, row in zip(class_names, confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    os.replace(tmp, path)


def row_normalised(confusion: torch.Tensor) -> torch.Tensor:
    """Each ground-truth row divided by its pixel count (rows of absent classes stay 0)."""
    confusion = confusion.double()
    return confusion / confusion.sum(1, keepdim=True).clamp(min=1)


def plot_confusion(path: Path, confusion: torch.Tensor, class_names: list[str]) -> None:
    """The row-normalised confusion matrix as a PNG: row i is where class i's pixels went."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or open figures

    values = row_normalised(confusion).numpy()
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    shown = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the gt class's pixels")
    ticks = 8 if n <= 40 else 4  # ADE20K's 150 names stay legible at 100 dpi
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=ticks)
    ax.set_yticks(range(n), class_names, fontsize=ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if values[i, j] >= 0.005:
                    colour = "white" if values[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
