"""Semantic segmentation of natural images: the mIoU selects best.ckpt.

Each validation image is predicted whole (`eval.mode=original`), on its centre crop
(`center_crop`, the mask cropped alike) or by sliding windows (`sliding_window`), as the
public UniMatch code evaluates Pascal, COCO/ADE20K and Cityscapes; or resized to fit
`eval.resize` and its logits resized back (`resize`, the DAFormer/FST UDA evaluation).
"""

from __future__ import annotations

from torch import Tensor, nn

from semiseg.evaluation.inference import WINDOW_BATCH, center_crop, predict
from semiseg.tasks.base import Task


class SegmentationTask(Task):
    name = "segmentation"

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
        self.keep_for_trust(probs)
        return probs.argmax(1), mask
