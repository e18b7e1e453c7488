"""What every task shares: one confusion matrix per validated network, the mIoU of each, and
the results.json keys every run has (`selection`, `best_val_score`, `best_step`, ...).

The confusion matrices are torchmetrics metrics: under DDP `compute()` sums them over the ranks,
so every rank sees the same scores (validation is exact whatever the number of processes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from semiseg.evaluation import reports
from semiseg.evaluation.metrics import iou_per_class, mean_iou, subset_mious
from semiseg.selection import trust


def percent_or_none(value) -> float | None:
    """A fraction as a percent rounded to 2 decimals; None for NaN (a class with no value)."""
    value = float(value)
    return None if value != value else round(100.0 * value, 2)


class Task(nn.Module):
    """A kind of prediction target. Subclasses set `selection` (the key of the validation entry
    whose maximum selects best.ckpt) and its label, and add their own scores."""

    name = "task"
    selection = "miou"
    selection_label = "mIoU"
    items = "images"  # what the validation items are (eval.py reports num_<items>)

    @classmethod
    def refuse_pictures(cls, dataset_cfg: dict, tool: str) -> None:
        """Raise ConfigError when `tool` (predict.py) cannot label single pictures with a model
        of this task; the tasks of pictures can."""

    def __init__(self, class_names: list[str], evaluation: dict, crop_size: int):
        super().__init__()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.cfg = dict(evaluation)
        self.crop_size = int(crop_size)
        self.absent = self.cfg.get("absent_class", "zero")
        self.subsets = dict(self.cfg.get("miou_subsets") or {})
        self.confusions = nn.ModuleDict()
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

    # ------------------------------------------------------------------ one validation
    def start(self, networks: list[str], device) -> None:
        """Before a validation: a confusion matrix for each network that lacks one."""
        for name in networks:
            if name not in self.confusions:
                self.confusions[name] = MulticlassConfusionMatrix(
                    self.num_classes, ignore_index=255
                ).to(device)

    def predict(self, network: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        """(predicted labels, ground truth) of one validation batch; a subclass passes its
        class probabilities to `keep_for_trust` before taking their argmax."""
        raise NotImplementedError

    def keep_for_trust(self, probs: Tensor) -> None:
        """Keep a prediction's class probabilities (N, C, H, W) for `update` to count, when
        trust is measured."""
        if self.trust is not None:
            self._probs = probs

    def update(self, name: str, pred: Tensor, mask: Tensor, batch: dict, chosen: bool) -> None:
        """Count one batch's prediction of network `name` (`chosen`: the evaluated network),
        and its pseudo-labels when it is the network whose trust is measured."""
        self.confusions[name].update(pred, mask)
        counted = name == self.trust_network if self.trust_network else chosen
        if counted and self.trust is not None:
            # sliding windows sum their softmaxes: back to one distribution per pixel
            probs = self._probs / self._probs.sum(1, keepdim=True).clamp(min=1e-12)
            probs, mask = probs.cpu(), mask.cpu()
            for counts in (self.trust, *self.trust_grid.values()):
                counts.update(probs, mask)

    def compute(self, chosen: str) -> dict:
        """The scores of this validation (the same on every rank), then reset for the next.
        `scores["others"]` holds the mIoU of each other validated network."""
        out = {}
        for name, metric in self.confusions.items():
            confusion = metric.compute().cpu()
            metric.reset()
            if name == chosen:
                out.update(self.scores(confusion))
            else:
                out.setdefault("others", {})[name] = 100.0 * mean_iou(confusion, self.absent)
        out.setdefault("others", {})
        return out

    def scores(self, confusion: Tensor) -> dict:
        """The chosen network's scores from its summed confusion matrix."""
        per_class = {
            n: percent_or_none(v)
            for n, v in zip(self.class_names, iou_per_class(confusion), strict=True)
        }
        return {
            "miou": 100.0 * mean_iou(confusion, absent=self.absent),
            "per_class_iou": per_class,
            "confusion": confusion,
        }

    def history_entry(self, step: int, scores: dict) -> dict:
        """What val_history keeps of one validation (checkpointed, in results.json)."""
        entry = {"step": int(step), "miou": round(scores["miou"], 2)}
        entry.update({f"miou_{n}": round(v, 2) for n, v in scores["others"].items()})
        return entry

    def logged(self, scores: dict) -> dict[str, float]:
        """Scalars for the loggers, besides val/miou and the best score."""
        values = {f"val/miou_{n}": v for n, v in scores["others"].items()}
        values.update(
            {f"val_iou/{n}": v for n, v in scores["per_class_iou"].items() if v is not None}
        )
        return values

    @property
    def best_log_key(self) -> str:
        return f"val/best_{self.selection}"

    def line(self, step: int, scores: dict, network: str, best: float) -> str:
        """The console line of one validation."""
        also = "".join(f", {n} {v:.2f}" for n, v in scores["others"].items())
        return f"step {step}: val mIoU {scores['miou']:.2f} ({network}{also}; best {best:.2f})"

    # ------------------------------------------------------------------ results.json
    def convention(self) -> str:
        if self.absent == "zero":
            return "mean over all classes; a class absent from prediction and ground truth counts 0"
        return "mean over classes present in prediction or ground truth"

    def best_entry(self, history: list[dict]) -> dict | None:
        """The validation that wrote best.ckpt: the first with the highest selection score."""
        scored = [h for h in history if self.selection in h]
        return max(scored, key=lambda h: h[self.selection]) if scored else None

    def train_results(self, history: list[dict], last: dict) -> dict:
        """results.json keys of a training run from its validation history and the scores of
        its last validation (`last`: the checkpointed `last_scores`)."""
        best = self.best_entry(history)
        out = {
            "selection": self.selection,
            "best_val_score": best[self.selection] if best else None,
            "best_step": best["step"] if best else None,
            "val_miou": history[-1]["miou"] if history else None,
            # the mIoU of the validation that wrote best.ckpt (its selection may be another score)
            "best_val_miou": best["miou"] if best else None,
            "per_class_iou": last.get("per_class_iou", {}),
            "miou_convention": self.convention(),
        }
        if self.subsets:
            out["miou_subsets"] = (
                subset_mious(out["per_class_iou"], self.subsets, self.absent) if history else None
            )
        return out

    def eval_results(self, scores: dict, out_dir) -> dict:
        """results.json keys of eval.py (and its confusion matrix files in `out_dir`)."""
        confusion = scores["confusion"]
        results = {
            "val_miou": round(scores["miou"], 2),
            "per_class_iou": scores["per_class_iou"],
            "miou_convention": self.convention(),
        }
        if self.subsets:
            results["miou_subsets"] = subset_mious(
                scores["per_class_iou"], self.subsets, self.absent
            )
        results.update(reports.scores(confusion, self.class_names, self.absent))
        reports.write_confusion_csv(out_dir / "confusion_matrix.csv", confusion, self.class_names)
        reports.plot_confusion(out_dir / "confusion_matrix.png", confusion, self.class_names)
        results["confusion_matrix"] = {"csv": "confusion_matrix.csv", "png": "confusion_matrix.png"}
        return {**results, **self.trust_results(out_dir)}

    def trust_results(self, out_dir) -> dict:
        """eval.py's `pseudo_label_trust` (and reliability.png in `out_dir`); {} without trust."""
        if self.trust is None:
            return {}
        trusted = trust.summary(self.trust, self.class_names)
        trust.plot_reliability(out_dir / "reliability.png", self.trust)
        trusted["plot"] = "reliability.png"
        if self.trust_grid:
            trusted["tau_for_precision"] = {
                "target": self.trust_target,
                "tau": trust.threshold_for_precision(self.trust_grid, self.trust_target),
            }
        return {"pseudo_label_trust": trusted}

    def eval_lines(self, results: dict) -> list[str]:
        """What eval.py prints."""
        return [
            format_iou_table(results["per_class_iou"], results["val_miou"]),
            f"pixel accuracy {results['pixel_accuracy']}, mean Dice {results['mean_dice']}, "
            f"mean precision {results['mean_precision']}, mean recall {results['mean_recall']}, "
            f"Cohen's kappa {results['cohen_kappa']}",
            *trust_lines(results),
        ]

    def last_state(self, scores: dict) -> dict:
        """What a checkpoint keeps of the last validation (no tensors)."""
        return {"per_class_iou": scores["per_class_iou"]}

    def write_prediction(self, path, pred: Tensor, palette) -> None:
        """Save one item's predicted labels at `path` (without suffix): an index PNG."""
        from semiseg.data import palettes

        path = path.with_name(path.name + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        palettes.save_index_png(path, pred[0].to(torch.uint8).cpu().numpy(), palette)

    # ------------------------------------------------------------------ dashboards
    rgb_panels = True  # the W&B callback shows images with ground truth and prediction

    def tables(self, scores_state: dict) -> dict[str, tuple[list[str], list[list]]]:
        """W&B tables of a validation: name -> (columns, rows)."""
        rows = [[n, v] for n, v in scores_state.get("per_class_iou", {}).items()]
        return {"val/per_class_iou": (["class", "iou"], rows)}


def trust_lines(results: dict) -> list[str]:
    """eval.py's line on the pseudo-labels' trust (none without it)."""
    trusted = results.get("pseudo_label_trust")
    if not trusted:
        return []
    return [
        f"pseudo-labels at tau {trusted['tau']}: ECE {trusted['ece']}%, precision per class "
        f"{trusted['precision']}, coverage {trusted['coverage']} (reliability.png)"
    ]


def format_iou_table(per_class: dict, miou: float) -> str:
    width = max(len(n) for n in per_class) + 2
    lines = [f"{'class':<{width}}IoU (%)", "-" * (width + 8)]
    for name, iou in per_class.items():
        lines.append(f"{name:<{width}}{'absent' if iou is None else f'{iou:6.2f}'}")
    lines += ["-" * (width + 8), f"{'mIoU':<{width}}{miou:6.2f}"]
    return "\n".join(lines)
