"""W&B dashboards: what a run shows beyond its scalars (`logger=wandb`).

The module logs the scalars itself, to every logger: each loss term, `mask_ratio`, `pseudo_acc`,
both learning rates, `val/miou`, `val/best_miou` and `val_iou/<class>`. At each validation this
callback adds, on rank 0:

- the task's tables (tasks/): `val/per_class_iou`, the IoU of every class; ACDC's
  `val/per_class_dice`; change detection's `val/change_scores` (no image panels for those two);
- `val/samples`: a few fixed validation images with the ground truth and the prediction as W&B
  segmentation masks with the class names;
- for methods that learn from unlabeled images, `val/unlabeled`: a few fixed unlabeled images with
  their pseudo-labels (pixels under the confidence threshold shown as `below tau`), and
  `val/unlabeled_confidence`: the confidence maps (white = 1).
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.evaluation.inference import WINDOW_BATCH, center_crop, predict

IGNORE = 255


class WandbPanels(Callback):
    def __init__(self, num_images: int = 4, max_side: int = 512):
        self.num_images = int(num_images)
        self.max_side = max_side

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.val_history:
            return
        logger = next((lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"), None)
        if logger is None:
            return
        step = trainer.global_step
        for name, (columns, rows) in pl_module.task.tables(pl_module.last_state).items():
            logger.log_table(name, columns=columns, data=rows, step=step)
        if not pl_module.task.rgb_panels:  # volumes and image pairs: tables only
            return
        if self.num_images <= 0 or trainer.datamodule is None:
            return
        labels = dict(enumerate(pl_module.class_names))
        was_training = pl_module.eval_network.training
        pl_module.eval_network.eval()
        try:
            self._log_validation_images(logger, pl_module, trainer.datamodule, labels, step)
            tau = getattr(pl_module, "tau", None)
            if tau is not None and getattr(trainer.datamodule, "unlabeled_set", None) is not None:
                self._log_unlabeled_images(logger, pl_module, trainer.datamodule, labels, tau, step)
        finally:
            pl_module.eval_network.train(was_training)

    def _probs(self, pl_module, image: torch.Tensor) -> torch.Tensor:
        cfg = pl_module.eval_cfg
        return predict(
            pl_module.eval_network,
            image[None].to(pl_module.device),
            cfg["mode"],
            pl_module.crop_size,
            pl_module.num_classes,
            cfg.get("window_border", "truncate"),
            cfg.get("window_batch", WINDOW_BATCH),
            cfg.get("resize"),
        )[0].float()

    def _log_validation_images(self, logger, pl_module, datamodule, labels, step) -> None:
        dataset = datamodule.val_set
        images, masks, captions = [], [], []
        for index in range(min(self.num_images, len(dataset))):
            item = dataset[index]
            image, mask = item["image"], item["mask"]
            if pl_module.eval_cfg["mode"] == "center_crop":
                image, mask = center_crop(image, mask, pl_module.crop_size)
            pred = self._probs(pl_module, image).argmax(0)
            picture, (gt, pred) = self._shrink(_to_uint8(image), [mask, pred])
            images.append(picture)
            masks.append(
                {
                    "prediction": {"mask_data": pred, "class_labels": labels},
                    "ground_truth": {
                        "mask_data": gt,
                        "class_labels": {**labels, IGNORE: "ignore"},
                    },
                }
            )
            captions.append(str(item.get("name", index)))
        logger.log_image("val/samples", images, step=step, masks=masks, caption=captions)

    def _log_unlabeled_images(self, logger, pl_module, datamodule, labels, tau, step) -> None:
        dataset = datamodule.unlabeled_set
        images, masks, confidences, captions = [], [], [], []
        for index in range(min(self.num_images, len(dataset.samples))):
            sample = dataset.samples[index]
            image = tf.normalize(tf.load_image(dataset.root / sample.image))
            conf, pseudo = self._probs(pl_module, image).softmax(0).max(0)
            pseudo = torch.where(conf >= tau, pseudo, torch.full_like(pseudo, IGNORE))
            conf_map = (conf.clamp(0, 1) * 255).round()
            picture, (pseudo, conf_map) = self._shrink(_to_uint8(image), [pseudo, conf_map])
            images.append(picture)
            masks.append(
                {
                    "pseudo_label": {
                        "mask_data": pseudo,
                        "class_labels": {**labels, IGNORE: f"below tau={tau:g}"},
                    }
                }
            )
            confidences.append(conf_map)
            captions.append(sample.image.rsplit("/", 1)[-1])
        logger.log_image("val/unlabeled", images, step=step, masks=masks, caption=captions)
        logger.log_image("val/unlabeled_confidence", confidences, step=step, caption=captions)

    def _shrink(self, picture: np.ndarray, maps: list) -> tuple[np.ndarray, list[np.ndarray]]:
        """Images at most max_side pixels long (masks by nearest neighbour), as uint8 arrays."""
        maps = [m.to(torch.uint8).cpu().numpy() if isinstance(m, torch.Tensor) else m for m in maps]
        h, w = picture.shape[:2]
        scale = self.max_side / max(h, w)
        if scale >= 1:
            return picture, maps
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        picture = np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
        maps = [np.asarray(Image.fromarray(m).resize(size, Image.NEAREST)) for m in maps]
        return picture, maps


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) tensor back to an (H, W, 3) uint8 picture."""
    pixels = image.cpu().float() * tf.IMAGENET_STD + tf.IMAGENET_MEAN
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
