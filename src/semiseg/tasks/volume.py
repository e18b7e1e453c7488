"""3D scans evaluated per volume (ACDC): the mean foreground Dice selects best.ckpt.

As the public UniMatch medical code: each volume slice by slice at crop_size
(evaluation/volume.py), Dice per volume and class, averaged over the volumes per class, the mean
over the foreground classes. The mIoU of the summed confusion matrix is reported beside it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semiseg.errors import ConfigError
from semiseg.evaluation.volume import dice_per_class, predict_volume, summarise
from semiseg.tasks.base import Task, percent_or_none, trust_lines


class VolumeTask(Task):
    name = "volume"
    selection = "mean_dice"
    selection_label = "mean Dice"
    items = "volumes"
    rgb_panels = False  # single-channel slices

    @classmethod
    def refuse_pictures(cls, dataset_cfg, tool):
        channels = int(dataset_cfg.get("in_channels") or 1)
        raise ConfigError(
            f"{tool} takes RGB images, and this checkpoint was trained on {channels}-channel "
            f"volumes (dataset={dataset_cfg.get('name')}): label its volumes with eval.py "
            "save_predictions=true (predictions/<volume>.h5)"
        )

    def __init__(self, class_names, evaluation, crop_size):
        super().__init__(class_names, evaluation, crop_size)
        self.dice_absent = self.cfg.get("dice_absent", "skip")
        self._dice: dict[str, Tensor] = {}  # volume name -> per-class Dice of the chosen network

    def predict(self, network: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        """One volume (1, D, H, W): slices predicted at crop_size, resized back. Its slices'
        probabilities are what the trust of the pseudo-labels counts, per pixel of each slice
        at the slice's size, as the Dice counts them."""
        probs = predict_volume(network, batch["image"], self.crop_size)
        self.keep_for_trust(probs)
        return probs.argmax(1), batch["mask"][0]

    def update(self, name, pred, mask, batch, chosen):
        super().update(name, pred, mask, batch, chosen)
        if chosen:
            dice = dice_per_class(pred, mask, self.num_classes, self.dice_absent)
            self._dice[str(batch["name"][0])] = dice.cpu()

    def compute(self, chosen):
        volumes, self._dice = self._dice, {}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, volumes)
            volumes = {k: v for part in gathered for k, v in part.items()}
        out = super().compute(chosen)
        names = sorted(volumes)
        if names:
            per_class, mean = summarise(torch.stack([volumes[n] for n in names]))
        else:
            per_class, mean = torch.full((self.num_classes,), torch.nan), float("nan")
        foreground = self.class_names[1:]
        out["mean_dice"] = 100.0 * mean
        out["per_class_dice"] = {
            c: percent_or_none(v) for c, v in zip(foreground, per_class[1:], strict=True)
        }
        out["per_volume_dice"] = {
            n: {c: percent_or_none(v) for c, v in zip(foreground, volumes[n][1:], strict=True)}
            for n in names
        }
        return out

    def history_entry(self, step, scores):
        return {**super().history_entry(step, scores), "mean_dice": round(scores["mean_dice"], 2)}

    def logged(self, scores):
        values = super().logged(scores)
        values["val/mean_dice"] = scores["mean_dice"]
        values.update(
            {f"val_dice/{c}": v for c, v in scores["per_class_dice"].items() if v is not None}
        )
        return values

    def line(self, step, scores, network, best):
        also = "".join(f", {n} {v:.2f}" for n, v in scores["others"].items())
        return (
            f"step {step}: val mean Dice {scores['mean_dice']:.2f} (mIoU {scores['miou']:.2f}; "
            f"{network}{also}; best mean Dice {best:.2f})"
        )

    def convention_dice(self) -> str:
        return (
            "per volume and class, averaged over volumes per class; mean over the foreground "
            f"classes; a class in neither prediction nor ground truth of a volume: "
            f"{self.dice_absent}"
        )

    def last_state(self, scores):
        keep = ("per_class_dice", "per_volume_dice")
        return {**super().last_state(scores), **{k: scores[k] for k in keep}}

    def train_results(self, history, last):
        out = super().train_results(history, last)
        best = self.best_entry(history)
        out.update(
            val_mean_dice=history[-1].get("mean_dice") if history else None,
            best_val_mean_dice=best["mean_dice"] if best else None,
            per_class_dice=last.get("per_class_dice", {}),
            per_volume_dice=last.get("per_volume_dice", {}),
            dice_convention=self.convention_dice(),
        )
        return out

    def eval_results(self, scores, out_dir):
        from semiseg.evaluation.reports import write_confusion_csv

        write_confusion_csv(out_dir / "confusion_matrix.csv", scores["confusion"], self.class_names)
        return {
            "mean_dice": percent_or_none(scores["mean_dice"] / 100.0),
            "per_class_dice": scores["per_class_dice"],
            "per_volume_dice": scores["per_volume_dice"],
            "dice_convention": self.convention_dice(),
            "val_miou": round(scores["miou"], 2),
            "per_class_iou": scores["per_class_iou"],
            "miou_convention": self.convention(),
            **self.trust_results(out_dir),
        }

    def eval_lines(self, results):
        width = max(len(c) for c in self.class_names) + 2
        lines = [f"{'class':<{width}}Dice (%)"]
        lines += [f"{c:<{width}}{v}" for c, v in results["per_class_dice"].items()]
        lines.append(f"{'mean Dice':<{width}}{results['mean_dice']} (foreground classes)")
        return ["\n".join(lines), *trust_lines(results)]

    def write_prediction(self, path, pred, palette):
        """A volume's labels as HDF5 (key `prediction`, uint8, (D, H, W))."""
        import h5py

        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path.with_name(path.name + ".h5"), "w") as f:
            f.create_dataset("prediction", data=pred.to(torch.uint8).cpu().numpy())

    def tables(self, state):
        tables = super().tables(state)
        rows = [[name, value] for name, value in state.get("per_class_dice", {}).items()]
        tables["val/per_class_dice"] = (["class", "dice"], rows)
        return tables
