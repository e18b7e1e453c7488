"""Label a user's images with a trained checkpoint (predict.py).

Every image under `input` (a folder, searched recursively, or one file) is predicted as the
checkpoint's dataset is evaluated (whole image or sliding window, as eval.py), optionally with
test-time augmentation (flips and scales, softmax averaged), and written under `output` at its
path below `input`: an index PNG (the class per pixel), a colour PNG (the dataset's palette)
and an overlay of the colours on the image. `ckpt_path` may also be a file written by export.py
(ONNX, OpenVINO, TorchScript): it runs through the same code, with the JSON beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from semiseg import export
from semiseg.checkpoints.load import inference_device, load_checkpoint, model_from_checkpoint
from semiseg.data import change, palettes
from semiseg.data import transforms as tf
from semiseg.data.splits import SplitError
from semiseg.errors import ConfigError, one_line
from semiseg.evaluation.inference import WINDOW_BATCH, predict
from semiseg.tasks import task_class

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PRECISIONS = {"fp32": None, "32": None, "bf16": torch.bfloat16}
KINDS = ("index", "colour", "overlay")


def find_images(input_path, output: Path | None = None) -> tuple[Path, list[Path]]:
    """(root, image paths relative to it): the images below a folder (recursively, sorted,
    skipping anything inside `output`) or one file (its folder and its name)."""
    if input_path is None or str(input_path) == "":
        raise ConfigError("input is empty: give input=DIR (every image below it) or input=FILE")
    path = Path(str(input_path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"input {path} does not exist: give input=DIR (every image below it) or input=FILE"
        )
    if path.is_file():
        return path.parent, [Path(path.name)]
    skip = output.resolve() if output is not None else None
    images = []
    for found in sorted(path.rglob("*")):
        if not found.is_file() or found.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if skip is not None and found.resolve().is_relative_to(skip):
            continue  # earlier results written inside the input folder
        images.append(found.relative_to(path))
    if not images:
        raise ConfigError(
            f"input {path} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively): "
            "give the folder of the images, or one image file"
        )
    return path, images


def output_names(relative: list[Path]) -> list[Path]:
    """Each image's output name: its relative path as .png. Images of one folder that differ
    only in their extension (x.jpg, x.png) keep it (x.jpg.png, x.png.png)."""
    names = [p.with_suffix(".png") for p in relative]
    taken = Counter(names)
    return [
        name if taken[name] == 1 else p.with_name(p.name + ".png")
        for name, p in zip(names, relative, strict=True)
    ]


def tta_probabilities(
    model,
    image: torch.Tensor,
    mode: str,
    crop_size: int,
    num_classes: int,
    border: str = "truncate",
    flip: bool = False,
    scales=(1.0,),
    window_batch: int = WINDOW_BATCH,
) -> torch.Tensor:
    """Class probabilities (1, C, H, W), averaged over scales x (image, horizontal flip).

    Each view is predicted as eval.py would (`mode`), its probabilities normalised to sum to
    1 per pixel (a sliding window sums them over windows), resized back to H x W (bilinear)
    and flipped back. Without flip and with scales (1.0,) this is eval.py's prediction."""
    h, w = image.shape[-2:]
    total = torch.zeros((image.shape[0], num_classes, h, w), dtype=torch.float32)
    views = 0
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = image
        if size != (h, w):
            scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            probs = predict(model, view, mode, crop_size, num_classes, border, window_batch).float()
            probs = probs / probs.sum(1, keepdim=True).clamp(min=1e-12)
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            total += probs.cpu()
            views += 1
    return total / views


def overlay(image: Image.Image, colour: Image.Image, alpha: float) -> Image.Image:
    """The colour mask blended over the image: alpha 0 is the image, 1 the mask."""
    return Image.blend(image.convert("RGB"), colour.convert("RGB"), alpha)


def _scales(value) -> tuple[float, ...]:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    try:
        scales = tuple(float(s) for s in (value if isinstance(value, list | tuple) else [value]))
    except (TypeError, ValueError):
        scales = ()
    if not scales or not all(s > 0 for s in scales):
        raise ConfigError(
            f"tta.scales={value}: give a list of positive factors, e.g. tta.scales=[0.75,1.0,1.25]"
        )
    return scales


def _autocast(precision: str, device: torch.device):
    key = str(precision)
    if key not in PRECISIONS:
        raise ConfigError(f"precision={precision}: choose fp32 or bf16")
    dtype = PRECISIONS[key]
    if dtype is None:
        return contextlib.nullcontext(), "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"note: precision=bf16 is not supported on {device}; running in fp32")
        return contextlib.nullcontext(), "fp32"
    return torch.autocast(device_type=device.type, dtype=dtype), "bf16"


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def refuse_non_pictures(config: dict) -> None:
    """predict.py reads RGB pictures: a checkpoint of another input (ACDC volumes, change pairs)
    stops in one line that says how to label its inputs."""
    dataset_cfg = config["dataset"]
    change.refuse_pairs(dataset_cfg, "predict.py")
    kind = (config.get("eval") or {}).get("task") or dataset_cfg.get("task")
    task_class(kind).refuse_pictures(dataset_cfg, "predict.py")
    channels = int(dataset_cfg.get("in_channels") or 3)
    if channels != 3:
        raise ConfigError(
            f"predict.py takes RGB images, and this checkpoint was trained on {channels}-channel "
            f"inputs (dataset={dataset_cfg.get('name')}): predict them with eval.py "
            "save_predictions=true"
        )


class _Source:
    """What predict.py needs of `ckpt_path`: a training checkpoint (.ckpt) or a file written
    by export.py (its JSON beside it): classes, eval mode, crop, palette and the network."""

    def __init__(self, path, network: str | None, cfg=None):
        if export.is_exported(path):
            self._model, meta = export.load_exported(path, network)
            self.format = meta["format"]
            self.network = meta["network"]
            self.class_names = list(meta["class_names"])
            self.eval_mode, self.crop_size = meta["eval_mode"], int(meta["crop_size"])
            self.palette = meta["palette"]
            return
        self.checkpoint = load_checkpoint(path, cfg)
        state = self.checkpoint["semiseg"]
        dataset_cfg = state["config"]["dataset"]
        refuse_non_pictures(state["config"])
        self.format = "checkpoint"
        self.requested = network
        self.network = network or state.get("eval_network", "student")
        self.class_names = list(state["class_names"])
        self.eval_mode, self.crop_size = dataset_cfg["eval_mode"], int(dataset_cfg["crop_size"])
        self.palette = dataset_cfg.get("palette")

    def model(self, device: torch.device):
        """A callable image (N, 3, H, W) -> logits on `device`."""
        if self.format == "checkpoint":
            return model_from_checkpoint(self.checkpoint, self.requested).to(device).eval()
        if self.format == "torchscript":
            return self._model.to(device)
        return self._model  # onnxruntime / OpenVINO: tensors in and out on the input's device


def run(cfg: DictConfig) -> dict:
    """Predict every image of `cfg.input` into `cfg.output`; returns the summary it writes
    as `output/predict.json`."""
    started = time.time()
    if OmegaConf.is_missing(cfg, "output") or cfg.output in (None, ""):
        raise ConfigError("output is required: give output=DIR, the folder for the predictions")
    output = Path(str(cfg.output)).expanduser()
    root, relative = find_images(cfg.input, output)
    loaded = _Source(cfg.ckpt_path, cfg.eval.get("model"), cfg)
    class_names = loaded.class_names
    num_classes = len(class_names)
    mode = cfg.eval.mode or loaded.eval_mode
    if mode not in ("original", "sliding_window"):
        raise ConfigError(
            f"eval.mode={mode}: predict labels whole images; use eval.mode=original or "
            "eval.mode=sliding_window (center_crop scores a crop only)"
        )
    crop_size = int(cfg.eval.get("crop_size") or loaded.crop_size)
    border = str(cfg.eval.window_border)
    if border not in ("align", "truncate"):
        raise ConfigError(f"eval.window_border={border}: choose truncate or align")
    window_batch = cfg.eval.get("window_batch", WINDOW_BATCH)
    if not isinstance(window_batch, int) or window_batch < 1:
        raise ConfigError(f"eval.window_batch={window_batch}: give the windows per forward (>= 1)")
    palette_spec = cfg.get("palette")
    if palette_spec is None:  # the checkpoint's dataset's colours
        palette_spec = loaded.palette
    if OmegaConf.is_config(palette_spec):
        palette_spec = OmegaConf.to_container(palette_spec)
    palette = palettes.resolve(palette_spec, num_classes)
    try:
        alpha = float(cfg.alpha)
    except (TypeError, ValueError):
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={cfg.alpha}: give the mask's weight in the overlay, 0..1")
    index_format = str(cfg.index_format)
    if index_format not in ("palette", "gray"):
        raise ConfigError(f"index_format={index_format}: choose palette (P mode) or gray (L)")
    kinds = [k for k in KINDS if cfg.save.get(k, True)]
    batch_size = cfg.get("batch_size", 1)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch_size={batch_size}: give how many images of one size go in a batch (>= 1)"
        )
    flip, scales = bool(cfg.tta.flip), _scales(cfg.tta.scales)
    device = inference_device(cfg.device)
    autocast, precision = _autocast(cfg.precision, device)
    if loaded.format != "checkpoint" and precision != "fp32":
        raise ConfigError(
            f"precision={cfg.precision}: an exported {loaded.format} file runs as exported "
            "(fp32); leave precision out, or predict with the checkpoint"
        )
    network = loaded.network
    model = loaded.model(device)

    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"output {output} cannot be created ({err.strerror}): give a folder you can write to"
        ) from None
    names = output_names(relative)
    print(
        f"predict: {len(relative)} image(s) from {root} with the {network} of {cfg.ckpt_path} "
        f"{'' if loaded.format == 'checkpoint' else f'as exported to {loaded.format} '}"
        f"({mode}, crop {crop_size}, flip {flip}, scales {list(scales)}, {precision}) into "
        f"{output}"
    )
    bar = tqdm(total=len(relative), desc=f"predict ({mode})", unit="img")

    def write(image: Image.Image, name: Path, probs: torch.Tensor) -> None:
        index = probs.argmax(0).numpy().astype(np.uint8)
        if "index" in kinds:
            path = output / "index" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if index_format == "palette":
                palettes.save_index_png(path, index, palette)
            else:
                Image.fromarray(index).save(path)  # uint8 (H, W): mode "L"
        colour = palettes.colorize(index, palette)
        if "colour" in kinds:
            _save(output / "colour" / name, colour)
        if "overlay" in kinds:
            _save(output / "overlay" / name, overlay(image, colour, alpha))

    def flush(pending: list) -> None:
        """Predict the pending images (all of one size) in one batch and write them."""
        batch = torch.stack([tf.normalize(image) for image, _ in pending]).to(device)
        with autocast:
            probs = tta_probabilities(
                model, batch, mode, crop_size, num_classes, border, flip, scales, window_batch
            )
        for (image, name), p in zip(pending, probs, strict=True):
            write(image, name, p)
        bar.update(len(pending))
        pending.clear()

    pending: list[tuple[Image.Image, Path]] = []  # consecutive images of one size
    for rel, name in zip(relative, names, strict=True):
        try:
            image = tf.load_image(root / rel)
        except SplitError as err:
            if pending:  # the images before it, still waiting for their batch, are written
                flush(pending)
            bar.leave = False  # on a terminal the error line replaces the bar
            bar.close()
            raise SplitError(
                f"{one_line(err)}; move it out of input={cfg.input} or convert it to PNG/JPEG, "
                f"then run again (predictions so far are in {output})"
            ) from None
        if pending and pending[0][0].size != image.size:
            flush(pending)
        pending.append((image, name))
        if len(pending) == batch_size:
            flush(pending)
    if pending:
        flush(pending)
    bar.close()

    summary = {
        "ckpt_path": str(cfg.ckpt_path),
        "input": str(cfg.input),
        "num_images": len(relative),
        "format": loaded.format,
        "network": network,
        "mode": mode,
        "crop_size": crop_size,
        "tta": {"flip": flip, "scales": list(scales)},
        "batch_size": batch_size,
        "precision": precision,
        "written": {kind: f"{kind}/" for kind in kinds},
        "index_format": index_format,
        "class_names": class_names,
        "palette": palette[:num_classes].tolist(),
        "wall_time_s": round(time.time() - started, 1),
    }
    tmp = output / "predict.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, output / "predict.json")
    print(f"done: {len(relative)} image(s) in {summary['wall_time_s']} s; written to {output}")
    return summary
