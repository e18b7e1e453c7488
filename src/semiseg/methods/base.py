"""The LightningModule every method shares.

It owns what is common to all methods: the SGD optimizer with a backbone group and a head group,
the per-iteration poly learning-rate decay, validation (inference mode -> confusion matrix ->
mIoU), and what a checkpoint carries. A method subclass writes `training_losses(batch)` and
nothing else; methods that step more than once per batch override `training_step`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from semiseg.errors import ConfigError
from semiseg.evaluation.inference import center_crop, predict
from semiseg.evaluation.metrics import iou_per_class, mean_iou
from semiseg.methods.losses import ohem_ce, supervised_ce


class SemiSegModule(L.LightningModule):
    # What the data module must provide; methods that learn from unlabeled images override it.
    uses_unlabeled: bool = False
    num_strong_views: int = 0

    def __init__(
        self,
        model: nn.Module,
        class_names: list[str],
        optim: dict,
        evaluation: dict,
        crop_size: int,
        name: str = "supervised",
        labeled_loss: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False  # every method takes its own optimizer steps
        self.model = model
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.optim_cfg = dict(optim)
        self.eval_cfg = dict(evaluation)
        self.crop_size = crop_size
        self.method_name = name
        self.labeled_loss_cfg = dict(labeled_loss or {"name": "ce"})
        if self.labeled_loss_cfg["name"] not in ("ce", "ohem"):
            raise ConfigError(
                f"labeled_loss.name '{self.labeled_loss_cfg['name']}' is unknown: use ce or ohem"
            )
        self.confusion = MulticlassConfusionMatrix(self.num_classes, ignore_index=255)
        # Validation history survives checkpoints (see on_save_checkpoint) so resumed runs and
        # results.json see every evaluation.
        self.val_history: list[dict[str, float]] = []
        self.best_miou = float("-inf")
        self.last_per_class: dict[str, float] = {}
        # The resolved run config, stored in checkpoints so eval.py can rebuild the model.
        self.run_config: dict | None = None

    # ------------------------------------------------------------------ data needs
    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        """Which streams the data module must yield for this method (read before building it)."""
        return {"unlabeled": cls.uses_unlabeled, "num_strong": cls.num_strong_views, "mix": None}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        cfg = self.optim_cfg
        groups = [
            {"params": list(self.model.backbone_parameters()), "lr": cfg["lr"]},
            {"params": list(self.model.head_parameters()), "lr": cfg["lr"] * cfg["lr_multi"]},
        ]
        for group in groups:
            group["initial_lr"] = group["lr"]
        return torch.optim.SGD(
            groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )

    @property
    def total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def poly_update(self, optimizer, iteration: int) -> None:
        """lr_t = lr * (1 - t / T) ** power, set after step t as the reference code does."""
        factor = max(0.0, 1.0 - iteration / self.total_steps) ** self.optim_cfg["poly_power"]
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def optimizer_step_with(self, loss: Tensor) -> None:
        """One backward, optional gradient clipping, one SGD step, then the poly update."""
        optimizer = self.optimizers()
        iteration = self.global_step  # optimizer steps taken before this one
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = self.optim_cfg.get("clip_grad")
        if clip:
            # Manual optimization: Lightning's gradient_clip_val is refused, so clip here,
            # through the precision plugin so scaled fp16 gradients are unscaled first.
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()
        self.poly_update(optimizer, iteration)

    def labeled_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """CE, or OHEM where the dataset asks for it (Cityscapes in the papers)."""
        cfg = self.labeled_loss_cfg
        if cfg["name"] == "ohem":
            return ohem_ce(logits, target, cfg.get("thresh", 0.7), cfg.get("min_kept", 200_000))
        return supervised_ce(logits, target)

    def training_losses(self, batch) -> dict[str, Tensor]:
        """Return a dict with the total `loss` and any terms to log. Written by each method."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> None:
        losses = self.training_losses(batch)
        self.optimizer_step_with(losses["loss"])
        self.log_train(losses, batch_size=self.labeled_batch_size(batch))

    def labeled_batch_size(self, batch) -> int:
        labeled = batch["labeled"] if "labeled" in batch else batch
        return int(labeled["image"].shape[0])

    def log_train(self, values: dict[str, Tensor | float], batch_size: int) -> None:
        logs = {
            f"train/{k}": (v.detach() if isinstance(v, Tensor) else v) for k, v in values.items()
        }
        groups = self.optimizers().param_groups
        logs["train/lr_backbone"] = groups[0]["lr"]
        logs["train/lr_head"] = groups[1]["lr"]
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log(
            "loss", values["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size
        )

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch, batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        mode = self.eval_cfg["mode"]
        if mode == "center_crop":
            image, mask = center_crop(image, mask, self.crop_size)
        border = self.eval_cfg.get("window_border", "truncate")
        probs = predict(self.model, image, mode, self.crop_size, self.num_classes, border)
        self.confusion.update(probs.argmax(1), mask)

    def on_validation_epoch_end(self) -> None:
        confusion = self.confusion.compute()  # summed over ranks under DDP
        self.confusion.reset()
        if self.trainer.sanity_checking:
            return
        miou = 100.0 * mean_iou(confusion, absent=self.eval_cfg.get("absent_class", "zero"))
        ious = iou_per_class(confusion)
        self.last_per_class = {
            name: round(100.0 * float(iou), 2) if not torch.isnan(iou) else None
            for name, iou in zip(self.class_names, ious, strict=True)
        }
        self.best_miou = max(self.best_miou, miou)
        self.val_history.append({"step": int(self.global_step), "miou": round(miou, 2)})
        self.log("val/miou", miou, prog_bar=True, sync_dist=False)
        self.log("val/best_miou", self.best_miou, sync_dist=False)
        self.print(f"step {self.global_step}: val mIoU {miou:.2f} (best {self.best_miou:.2f})")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["semiseg"] = {
            "config": self.run_config,
            "class_names": self.class_names,
            "val_history": self.val_history,
            "best_miou": self.best_miou,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("semiseg", {})
        self.val_history = list(state.get("val_history", []))
        self.best_miou = state.get("best_miou", float("-inf"))
