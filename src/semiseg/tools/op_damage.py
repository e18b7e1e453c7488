"""How much each intensity op of iMAS/AugSeg hides each class from a trained model.

    python -m semiseg.tools.op_damage RUN/checkpoints/best.ckpt [--crops 96] [--policy augseg|imas]

Takes random crops of the checkpoint's validation images as the training pipeline makes them
(long side scaled by U(0.5, 2.0), a crop of the training crop size), then for every op of the
policy, with magnitudes from the lower and the upper half of its range (u in [0, 0.5) and
[0.5, 1)), prints the model's per-class pixel accuracy (the fraction of a class's pixels
predicted as that class) beside the accuracy on the unchanged crops. A strong view that a good
model cannot read teaches the student on labels its input does not support: on the toy, whose
classes are light/dark textures, contrast and brightness near 0.05, solarize and invert do that
(docs/results.md).
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from semiseg.augment import intensity as I

HALVES = ((0.0, 0.5), (0.5, 1.0))


def random_crops(dataset, count: int, crop: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(images, masks) of `count` crops, each of a rescaled validation image (the weak view's
    geometry); images padded by edge replication and masks by 255 where a scaled image is
    smaller than the crop."""
    rng = random.Random(seed)
    images, masks = [], []
    for k in range(count):
        item = dataset[k % len(dataset)]
        x, y = item["image"][None], item["mask"][None, None].float()
        scale = rng.uniform(0.5, 2.0)
        h, w = (max(1, round(s * scale)) for s in x.shape[-2:])
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
        y = F.interpolate(y, (h, w), mode="nearest")
        pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        y = F.pad(y, (0, pad_w, 0, pad_h), value=255)
        top, left = rng.randint(0, y.shape[-2] - crop), rng.randint(0, y.shape[-1] - crop)
        images.append(x[..., top : top + crop, left : left + crop])
        masks.append(y[0, :, top : top + crop, left : left + crop].long())
    return torch.cat(images), torch.cat(masks)


def class_accuracy(model, images: Tensor, masks: Tensor, num_classes: int) -> list[float | None]:
    """Per class: the fraction of its pixels the model predicts as it (None: no pixels)."""
    with torch.no_grad():
        pred = torch.cat([model(images[i : i + 16]).argmax(1) for i in range(0, len(images), 16)])
    out = []
    for c in range(num_classes):
        pixels = masks == c
        out.append(float((pred[pixels] == c).float().mean()) if pixels.any() else None)
    return out


def op_damage(
    model, images: Tensor, masks: Tensor, num_classes: int, policy: I.IntensityPolicy, seed=0
) -> dict[str, list[float | None]]:
    """{"none": accuracies, "<op> [lo, hi)": accuracies, ...} for every op of the policy except
    identity; each image draws its own magnitude u in the half and, for hue, its own sign."""
    generator = torch.Generator().manual_seed(seed)
    results = {"none": class_accuracy(model, images, masks, num_classes)}
    as_uint8 = I.to_uint8(images)
    for name in policy.ops:
        if name == "identity":
            continue
        for lo, hi in HALVES:
            u = lo + (hi - lo) * torch.rand(len(images), generator=generator)
            coin = torch.rand(len(images), generator=generator)
            params = I.op_parameter(name, u * policy.strength, coin, policy)
            changed = I.from_uint8(I.OPS[name](as_uint8, params))
            results[f"{name} [{lo}, {hi})"] = class_accuracy(model, changed, masks, num_classes)
    return results


def format_table(results: dict[str, list[float | None]], class_names: list[str]) -> str:
    width = max(len(k) for k in results) + 2
    lines = ["op".ljust(width) + " ".join(n[:12].rjust(12) for n in class_names)]
    for key, accuracies in results.items():
        cells = ("-" if a is None else f"{100 * a:.1f}" for a in accuracies)
        lines.append(key.ljust(width) + " ".join(c.rjust(12) for c in cells))
    return "\n".join(lines)


def main(argv=None) -> None:
    from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
    from semiseg.data.datamodule import build_val_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt_path")
    parser.add_argument("--crops", type=int, default=96)
    parser.add_argument("--policy", choices=("augseg", "imas"), default="augseg")
    parser.add_argument("--model", choices=("student", "teacher"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.ckpt_path)
    names = list(checkpoint["semiseg"]["class_names"])
    dataset_cfg = OmegaConf.create(checkpoint["semiseg"]["config"]["dataset"])
    model = model_from_checkpoint(checkpoint, args.model).eval()
    dataset = build_val_dataset(dataset_cfg, len(names))
    images, masks = random_crops(dataset, args.crops, int(dataset_cfg.crop_size), args.seed)
    policy = I.AUGSEG_POLICY if args.policy == "augseg" else I.IMAS_POLICY
    results = op_damage(model, images, masks, len(names), policy, args.seed)
    print(f"per-class pixel accuracy (%) of {args.ckpt_path} on {args.crops} crops")
    print(format_table(results, names))


if __name__ == "__main__":
    main()
