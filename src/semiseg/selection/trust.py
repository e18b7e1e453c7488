"""How far to trust the pseudo-labels: measured on labeled validation images, where the truth is
known, with the network that makes the pseudo-labels.

- Per class c at the method's threshold tau (a pixel is pseudo-labeled when its top softmax
  probability `conf >= tau`, as the methods' losses keep it):
  precision_c = #(pseudo-label c, gt c) / #(pseudo-label c), among pixels with a ground truth;
  coverage_c  = #(gt c, conf >= tau) / #(gt c): the share of class c's pixels that get any
  pseudo-label (right or wrong). Pixels with gt 255 count nowhere.
- Calibration of the top class (Guo, Pleiss, Sun & Weinberger, "On calibration of modern neural
  networks", ICML 2017): M equal-width bins ((m-1)/M, m/M] of conf; per bin the pixel count,
  mean confidence and accuracy (argmax = gt); ECE = sum_m n_m / n * |acc_m - conf_m|.

Counts are sums, so they add over images (and ranks) before the ratios are taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = 255
# The thresholds eval.py tries for `trust_target_precision` (0.50, 0.55, ..., 0.95, 0.99).
TAU_GRID = (*(round(0.5 + 0.05 * k, 2) for k in range(10)), 0.99)


@dataclass
class TrustCounts:
    num_classes: int
    bins: int = 15
    tau: float = 0.95

    def __post_init__(self):
        c, m = self.num_classes, self.bins
        self.pseudo = torch.zeros(c, dtype=torch.float64)  # confident pixels labeled c
        self.pseudo_correct = torch.zeros(c, dtype=torch.float64)  # ... whose gt is c
        self.gt = torch.zeros(c, dtype=torch.float64)  # pixels of gt c
        self.gt_covered = torch.zeros(c, dtype=torch.float64)  # ... that are confident
        self.bin_count = torch.zeros(m, dtype=torch.float64)
        self.bin_conf = torch.zeros(m, dtype=torch.float64)  # sum of conf
        self.bin_correct = torch.zeros(m, dtype=torch.float64)  # sum of (argmax == gt)

    def update(self, probs: Tensor, gt: Tensor) -> None:
        """probs (N, C, H, W) softmax; gt (N, H, W) class indices or 255."""
        conf, labels = probs.float().max(1)
        valid = gt != IGNORE
        conf, labels, gt = conf[valid], labels[valid], gt[valid].long()
        confident = conf >= self.tau  # in the probabilities' dtype, as the losses compare
        conf = conf.double()
        correct = labels == gt
        c = self.num_classes
        self.pseudo += torch.bincount(labels[confident], minlength=c).double()
        self.pseudo_correct += torch.bincount(labels[confident & correct], minlength=c).double()
        self.gt += torch.bincount(gt, minlength=c).double()
        self.gt_covered += torch.bincount(gt[confident], minlength=c).double()
        index = bin_index(conf, self.bins)
        self.bin_count += torch.bincount(index, minlength=self.bins).double()
        self.bin_conf += torch.bincount(index, weights=conf, minlength=self.bins)
        self.bin_correct += torch.bincount(index, weights=correct.double(), minlength=self.bins)

    def precision(self) -> Tensor:
        """Per class; NaN where no pixel was pseudo-labeled c."""
        return self.pseudo_correct / self.pseudo.where(self.pseudo > 0, torch.nan)

    def coverage(self) -> Tensor:
        """Per class; NaN where the ground truth has no pixel of c."""
        return self.gt_covered / self.gt.where(self.gt > 0, torch.nan)

    def reliability(self) -> list[dict]:
        """Per bin: its range, pixel count, mean confidence and accuracy (None when empty)."""
        rows = []
        for m in range(self.bins):
            n = float(self.bin_count[m])
            rows.append(
                {
                    "low": m / self.bins,
                    "high": (m + 1) / self.bins,
                    "count": int(n),
                    "confidence": float(self.bin_conf[m] / n) if n else None,
                    "accuracy": float(self.bin_correct[m] / n) if n else None,
                }
            )
        return rows

    def ece(self) -> float:
        total = float(self.bin_count.sum())
        if total == 0:
            return float("nan")
        gaps = (self.bin_correct - self.bin_conf).abs()  # n_m * |acc_m - conf_m|
        return float(gaps.sum() / total)


def bin_index(conf: Tensor, bins: int) -> Tensor:
    """The bin ((m-1)/M, m/M] of each confidence, 0-based; 0 goes into the first bin."""
    return (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)


def threshold_for_precision(counts_by_tau: dict[float, TrustCounts], target: float) -> float | None:
    """The lowest threshold whose overall pseudo-label precision reaches `target` (None: none
    does): the most pixels kept at that precision."""
    for tau in sorted(counts_by_tau):
        counts = counts_by_tau[tau]
        kept = float(counts.pseudo.sum())
        if kept and float(counts.pseudo_correct.sum()) / kept >= target:
            return tau
    return None


def summary(counts: TrustCounts, class_names: list[str]) -> dict:
    """What results.json keeps: per class precision and coverage (percent, None where
    undefined), the reliability bins and the ECE (percent)."""

    def percent(values):
        return {
            n: (None if v != v else round(100.0 * float(v), 2))
            for n, v in zip(class_names, values.tolist(), strict=True)
        }

    ece = counts.ece()
    return {
        "tau": counts.tau,
        "precision": percent(counts.precision()),
        "coverage": percent(counts.coverage()),
        "ece": None if ece != ece else round(100.0 * ece, 2),
        "reliability": counts.reliability(),
    }


def plot_reliability(path, counts: TrustCounts) -> None:
    """The reliability diagram: accuracy against mean confidence per bin, the diagonal, and
    each bin's share of pixels below it."""
    from matplotlib.figure import Figure

    rows = [r for r in counts.reliability() if r["count"]]
    total = max(1, sum(r["count"] for r in rows))
    fig = Figure(figsize=(4.5, 5.0))
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = 1.0 / counts.bins
    top.bar(
        [r["low"] for r in rows],
        [r["accuracy"] for r in rows],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    top.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    top.plot(
        [r["confidence"] for r in rows],
        [r["accuracy"] for r in rows],
        "o",
        color="red",
        markersize=3,
        label="(mean confidence, accuracy)",
    )
    top.set_ylabel("accuracy")
    top.set_title(f"ECE {100 * counts.ece():.2f}%")
    top.legend(fontsize=7, loc="upper left")
    bottom.bar(
        [r["low"] for r in rows],
        [r["count"] / total for r in rows],
        width=width,
        align="edge",
        color="grey",
    )
    bottom.axvline(counts.tau, color="red", linewidth=1)
    bottom.set_xlabel("top-class confidence (red: the method's threshold)")
    bottom.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
