"""Semantic segmentation of natural images: the mIoU selects best.ckpt.

Each validation image is predicted whole (`eval.mode=original`), on its centre crop
(`center_crop`, the mask cropped alike) or by sliding windows (`sliding_window`), as the
public UniMatch code evaluates Pascal, COCO/ADE20K and Cityscapes; or resized to fit
`eval.resize` and its logits resized back (`resize`, the DAFormer/FST UDA evaluation).
"""

from __future__ import annotations

from torch import Tensor, nn

from semiseg.evaluation.inference import WINDOW_BATCH, center_crop, predict
from semiseg.selection import trust
from semiseg.tasks.base import Task


class SegmentationTask(Task):
    name = "segmentation"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # eval.py: how far the evaluated network's pseudo-labels can be trusted (selection/trust)
        tau = self.cfg.get("trust_tau")
        self.trust = None if tau is None else trust.TrustCounts(self.num_classes, tau=tau)
        # and the lowest threshold of TAU_GRID whose pseudo-labels reach a target precision
        self.trust_target = self.cfg.get("trust_target_precision")
        self.trust_grid = {}
        if self.trust is not None and self.trust_target is not None:
            self.trust_grid = {
                t: trust.TrustCounts(self.num_classes, tau=t) for t in trust.TAU_GRID
            }
        # the network whose pseudo-labels are counted (None: the evaluated one); a training
        # run's trust callback (selection/trust_callback.py) names the EMA teacher
        self.trust_network = None
        self._probs = None

    def predict(self, network: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        image, mask = batch["image"], batch["mask"]
        mode = self.cfg["mode"]
        if mode == "center_crop":
            image, mask = center_crop(image, mask, self.crop_size)
        probs = predict(
            network,
            image,
            mode,
            self.crop_size,
            self.num_classes,
            self.cfg.get("window_border", "truncate"),
            self.cfg.get("window_batch", WINDOW_BATCH),
            self.cfg.get("resize"),
        )
        if self.trust is not None:
            self._probs = probs
        return probs.argmax(1), mask

    def update(self, name: str, pred: Tensor, mask: Tensor, batch: dict, chosen: bool) -> None:
        super().update(name, pred, mask, batch, chosen)
        counted = name == self.trust_network if self.trust_network else chosen
        if counted and self.trust is not None:
            # sliding windows sum their softmaxes: back to one distribution per pixel
            probs = self._probs / self._probs.sum(1, keepdim=True).clamp(min=1e-12)
            for counts in (self.trust, *self.trust_grid.values()):
                counts.update(probs.cpu(), mask.cpu())

    def eval_results(self, scores: dict, out_dir) -> dict:
        results = super().eval_results(scores, out_dir)
        if self.trust is not None:
            results["pseudo_label_trust"] = trust.summary(self.trust, self.class_names)
            trust.plot_reliability(out_dir / "reliability.png", self.trust)
            results["pseudo_label_trust"]["plot"] = "reliability.png"
            if self.trust_grid:
                results["pseudo_label_trust"]["tau_for_precision"] = {
                    "target": self.trust_target,
                    "tau": trust.threshold_for_precision(self.trust_grid, self.trust_target),
                }
        return results

    def eval_lines(self, results: dict) -> list[str]:
        lines = super().eval_lines(results)
        trusted = results.get("pseudo_label_trust")
        if trusted:
            lines.append(
                f"pseudo-labels at tau {trusted['tau']}: ECE {trusted['ece']}%, precision per "
                f"class {trusted['precision']}, coverage {trusted['coverage']} (reliability.png)"
            )
        return lines
