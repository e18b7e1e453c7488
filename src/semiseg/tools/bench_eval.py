"""Time sliding-window inference: python -m semiseg.tools.bench bench.eval=true [bench.precision=bf16]
[bench.channels_last=true] [bench.images=2] [model.encoder=resnet101] [eval.window_batch=8]

One random 1024x2048 image (Cityscapes' size, `bench.height`/`bench.width`) predicted as
validation does (`evaluation.inference.predict`: windows of the dataset's crop, default
dataset=cityscapes: 801, stride 2/3, `eval.window_border`, `eval.window_batch` windows per
forward) by the dataset's model (ResNet-101 DeepLabV3+ for Cityscapes) with random weights. Prints images per second and peak memory (CUDA:
the largest allocation; CPU: the process's peak resident memory). Run fp32 and bf16 as separate
commands: a process's peak memory never goes down.
"""

from __future__ import annotations

import contextlib
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from semiseg.errors import ConfigError
from semiseg.evaluation.inference import WINDOW_BATCH, predict, window_starts
from semiseg.paths import config_dir
from semiseg.tools.bench import _peak_memory_mb, _sync

DEFAULTS = {
    "images": 2,
    "warmup": 1,
    "height": 1024,
    "width": 2048,
    "precision": "32",
    "channels_last": False,
    "device": "auto",
}


def main(overrides: list[str], bench_overrides: dict | None = None) -> dict:
    bench = dict(DEFAULTS)
    for key, value in (bench_overrides or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"bench.{key} is unknown here: use one of {', '.join(DEFAULTS)}")
        default = DEFAULTS[key]
        bench[key] = value.lower() == "true" if isinstance(default, bool) else type(default)(value)
    dataset = [] if any(x.startswith("dataset=") for x in overrides) else ["dataset=cityscapes"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*dataset, "model.pretrained=scratch", *overrides])
    window = int(cfg.dataset.crop_size)
    classes = len(cfg.dataset.classes or []) or 19
    with open_dict(cfg):
        cfg.model.representation_dim = None  # the segmentation network only

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if bench["device"] == "auto"
        else bench["device"]
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=classes).to(device).eval()
    image = torch.randn(1, 3, bench["height"], bench["width"], device=device)
    if bench["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    bf16 = bench["precision"] in ("bf16", "bf16-mixed")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    border = str(cfg.eval.window_border)
    window_batch = int(cfg.eval.get("window_batch", WINDOW_BATCH))
    stride = int(2 / 3 * window)
    windows = len(window_starts(bench["height"], window, stride, border)) * len(
        window_starts(bench["width"], window, stride, border)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    seconds, cpu_seconds = [], []
    for index in range(bench["warmup"] + bench["images"]):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with autocast:
            probs = predict(model, image, "sliding_window", window, classes, border, window_batch)
        probs.argmax(1)
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        warm = index < bench["warmup"]
        print(
            f"image {index + 1}: {elapsed:.2f} s (process CPU time {cpu:.2f} s)"
            + (" (warm-up)" if warm else "")
        )
        if not warm:
            seconds.append(elapsed)
            cpu_seconds.append(cpu)

    mean = sum(seconds) / len(seconds)
    report = {
        "encoder": cfg.model.encoder,
        "size": f"{bench['height']}x{bench['width']}",
        "window": window,
        "windows": windows,
        "border": border,
        "window_batch": window_batch,
        "precision": "bf16" if bf16 else "fp32",
        "channels_last": bench["channels_last"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "s_per_image": round(mean, 3),
        "images_per_s": round(1 / mean, 3),
        "cpu_s_per_image": round(sum(cpu_seconds) / len(cpu_seconds), 3),
        "peak_memory_mb": round(_peak_memory_mb(device)),
    }
    print(
        f"\nsliding window, {cfg.model.encoder} (random init), {report['size']}, window "
        f"{window} ({windows} windows, {border}, {window_batch} per forward), "
        f"{report['precision']}, channels_last {bench['channels_last']}, {device}, "
        f"{report['threads']} threads, mean of {len(seconds)} images:\n"
        f"  {mean:.2f} s per image   {report['images_per_s']} images/s   "
        f"peak memory {report['peak_memory_mb']} MB"
    )
    return report
