"""Time the data pipeline alone: python -m semiseg.tools.bench bench.data_only=true dataset.crop_size=321

Without a `dataset=` override, synthetic images of the papers' sizes are written to a temporary
folder first: Pascal-like JPEGs of 500x375 (crop below 700) or Cityscapes-like PNGs of 2048x1024
(crop 700 and above; `bench.synthetic=pascal|cityscapes` picks one), with masks (the unlabeled
list names none: the public code reads none).
With `dataset=pascal dataset.root=...` (any dataset, any split) the real files are read.

The items are made by the training datasets themselves (`data.datamodule`) for the chosen method
(default UniMatch: an unlabeled item is one decode, the weak view, two strong views, two CutMix
boxes and the mix partner's views; `method.strong_views=step` leaves the strong views to the
training step). They are timed in this process with one thread, as a DataLoader worker runs:
items per second per worker is items per second per core. `bench.workers=N` also times the real
DataLoader with N workers (only meaningful with N free cores).

Workers one GPU needs = (unlabeled items per GPU per step / unlabeled items per s per worker
+ labeled items ... / labeled rate) / seconds per step; defaults are the papers' Pascal step:
2 labeled + 2 unlabeled items per GPU (each unlabeled item carries its mix partner) in 0.66 s
(`bench.gpu_step_s`, `bench.labeled_per_gpu`, `bench.unlabeled_per_gpu`).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import open_dict
from PIL import Image
from torch.utils.data import DataLoader

from semiseg.data import transforms as tf
from semiseg.data.datasets import LabeledDataset
from semiseg.errors import ConfigError
from semiseg.paths import config_dir

# width, height, format and classes of the papers' images; the noise brings the files near
# the real sizes (VOC JPEGs about 100 KB, Cityscapes PNGs about 2.5 MB), so decoding costs alike
SYNTHETIC = {"pascal": (500, 375, "jpg", 21, 14), "cityscapes": (2048, 1024, "png", 19, 2)}
DEFAULTS = {
    "synthetic": "auto",  # auto: cityscapes at crop >= 700, else pascal; ignored with dataset=
    "num_images": 16,  # synthetic images written (at least 5)
    "items": 20,  # unlabeled items timed (labeled: as many)
    "warmup": 2,
    "workers": 0,  # >0: also time the real DataLoader with this many workers
    "gpu_step_s": 0.66,
    "labeled_per_gpu": 2,
    "unlabeled_per_gpu": 2,
    "seed": 0,
}


def synthetic_image(rng: np.random.Generator, width: int, height: int, noise=6) -> np.ndarray:
    """Smooth colour regions, edges and sensor-like noise: compresses about as photos do."""
    coarse = rng.integers(0, 256, (max(height // 64, 2), max(width // 64, 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    image = smooth.astype(np.int16)
    for _ in range(12):  # a few hard-edged objects
        x, y = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 20, width // 4), rng.integers(height // 20, height // 4)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    image += rng.normal(0, noise, image.shape).astype(np.int16)
    return image.clip(0, 255).astype(np.uint8)


def synthetic_mask(rng: np.random.Generator, width: int, height: int, classes: int) -> np.ndarray:
    coarse = rng.integers(0, classes, (max(height // 64, 2), max(width // 64, 2)), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.NEAREST))


def write_synthetic(root: Path, kind: str, count: int, seed: int = 0) -> str:
    """The split-file layout of `dataset=custom` under root, split `bench`; a summary line."""
    width, height, ext, classes, noise = SYNTHETIC[kind]
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines, sizes = [], []
    for index in range(count):
        image = root / "images" / f"{index:04d}.{ext}"
        Image.fromarray(synthetic_image(rng, width, height, noise)).save(image, quality=90)
        sizes.append(image.stat().st_size)
        mask = root / "masks" / f"{index:04d}.png"
        Image.fromarray(synthetic_mask(rng, width, height, classes)).save(mask)
        lines.append(f"images/{image.name} masks/{mask.name}")
    # the last image validates, half of the rest are labeled, the others unlabeled
    half = max((count - 1) // 2, 1)
    split = root / "splits" / "bench"
    split.mkdir(parents=True)
    (split / "labeled.txt").write_text("\n".join(lines[:half]) + "\n")
    # unlabeled images without masks, as the public code reads them
    unlabeled = [line.split()[0] for line in lines[half:-1]]
    (split / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n")
    (root / "splits" / "val.txt").write_text(lines[-1] + "\n")
    (root / "classes.txt").write_text("\n".join(f"class{k}" for k in range(classes)) + "\n")
    return (
        f"{count} synthetic {kind}-size images ({width}x{height} {ext.upper()}, "
        f"mean {statistics.mean(sizes) / 1024:.0f} KB)"
    )


def build_datamodule(cfg):
    """The training data module exactly as train.py builds it for cfg.method (no model)."""
    method_cls = get_class(cfg.method._target_)
    datamodule = instantiate(cfg.data, **method_cls.data_requirements(cfg.method))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def items_per_second(dataset, count: int, warmup: int) -> float:
    """Random items made one after another in this process (one worker's work), over this
    process's CPU time: on a shared core the wall clock also counts the other processes."""
    for _ in range(warmup):
        dataset[random.randrange(len(dataset))]
    start = time.process_time()
    for _ in range(count):
        dataset[random.randrange(len(dataset))]
    return count / (time.process_time() - start)


def stage_milliseconds(dataset, count: int) -> dict:
    """CPU milliseconds of the costly stages on this dataset's images: one decode, one strong
    view (`strong_color`) of a crop."""
    samples = [dataset.samples[k % len(dataset.samples)] for k in range(count)]
    start = time.process_time()
    images = [tf.load_image(dataset.root / sample.image) for sample in samples]
    decode = (time.process_time() - start) / count
    crops = [
        tf.pad_and_crop(image, [], dataset.crop_size, [])[0] for image in images
    ]  # unresized: the strong view's cost depends on the crop only
    start = time.process_time()
    for crop in crops:
        tf.strong_color(crop)
    strong = (time.process_time() - start) / count
    return {"decode": 1000 * decode, "strong_view": 1000 * strong}


def loader_items_per_second(dataset, batch_size: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, drop_last=True)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch made
    start = time.perf_counter()
    done = 0
    for _ in range(batches):
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(loader)
            next(iterator)
        done += batch_size
    return done / (time.perf_counter() - start)


def strong_views(unlabeled, per_image: int) -> int:
    """Strong views per unlabeled item: the image's and its mix partner's."""
    return per_image * (1 if unlabeled.mix == "none" else 2)


def strong_step_seconds(dataset, count: int, views: int, device: torch.device) -> float:
    """Seconds per unlabeled item of the strong views the step stage makes on `device`
    (`method.strong_views=step`), on a batch of `count` weak views."""
    from semiseg.augment.strong import unimatch_strong

    weak = torch.stack([dataset[k % len(dataset)]["weak"] for k in range(count)]).to(device)
    unimatch_strong(weak)  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    for _ in range(views):
        unimatch_strong(weak)
    sync()
    return (clock() - start) / count


def compose_config(overrides: list[str], bench: dict, tmp: Path) -> tuple:
    own_dataset = any(item.split("=", 1)[0] in ("dataset", "dataset.root") for item in overrides)
    note = None
    if not own_dataset:
        crop = next(
            (int(x.split("=", 1)[1]) for x in overrides if x.startswith("dataset.crop_size=")),
            321,
        )
        kind = bench["synthetic"]
        if kind == "auto":
            kind = "cityscapes" if crop >= 700 else "pascal"
        note = write_synthetic(tmp / kind, kind, bench["num_images"], bench["seed"])
        overrides = [
            "dataset=custom",
            f"dataset.root={tmp / kind}",
            "split=bench",
            "data.batch_size=2",  # the papers' per-GPU batch; the synthetic lists are short
            *overrides,
        ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.split = str(cfg.split)
    return cfg, note


def main(overrides: list[str], bench_overrides: dict | None = None) -> dict:
    bench = dict(DEFAULTS)
    for key, value in (bench_overrides or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"bench.{key} is unknown here: use one of {', '.join(DEFAULTS)}")
        bench[key] = value if key == "synthetic" else type(DEFAULTS[key])(value)
    random.seed(bench["seed"])
    torch.manual_seed(bench["seed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    try:
        with tempfile.TemporaryDirectory(prefix="semiseg-bench-data-") as tmp:
            return _run(overrides, bench, Path(tmp))
    finally:
        torch.set_num_threads(threads)


def _run(overrides: list[str], bench: dict, tmp: Path) -> dict:
    cfg, note = compose_config(overrides, bench, tmp)
    datamodule = build_datamodule(cfg)
    unlabeled, labeled = datamodule.unlabeled_set, datamodule.labeled_set
    print(
        f"data bench: {note or f'dataset={cfg.dataset.name} ({cfg.dataset.root})'}, "
        f"crop {cfg.dataset.crop_size}, method={cfg.method.name}"
        + (f" strong_views={cfg.method.strong_views}" if "strong_views" in cfg.method else "")
        + ", 1 thread (one worker)"
    )
    report = {
        "dataset": cfg.dataset.name,
        "crop": cfg.dataset.crop_size,
        "method": cfg.method.name,
        "strong_views": cfg.method.get("strong_views", "workers"),
        "synthetic": note,
    }
    rates = {}
    if unlabeled is not None:
        rates["unlabeled"] = items_per_second(unlabeled, bench["items"], bench["warmup"])
        item = unlabeled[0]
        megabytes = sum(v.nbytes for v in item.values() if torch.is_tensor(v)) / 2**20
        report["unlabeled_item_mb"] = round(megabytes, 1)
        # what a worker hands the training process through shared memory, per item
        print(f"  unlabeled item: {', '.join(sorted(item))} ({megabytes:.1f} MB)")
    rates["labeled"] = items_per_second(labeled, bench["items"], bench["warmup"])
    for name, rate in rates.items():
        print(f"  {name:<9} {rate:7.2f} items/s per worker ({1000 / rate:.0f} ms per item)")
        report[f"{name}_items_per_s_per_worker"] = round(rate, 3)
    if isinstance(labeled, LabeledDataset):  # image files (not ACDC's HDF5 slices)
        stages = stage_milliseconds(labeled, min(bench["items"], 8))
        report.update({f"{k}_ms": round(v, 1) for k, v in stages.items()})
        print(
            f"  of which: decode {stages['decode']:.0f} ms per image, one strong view "
            f"{stages['strong_view']:.0f} ms (an unlabeled item: 1 decode"
            + (
                f", {strong_views(unlabeled, unlabeled.num_strong)} strong views)"
                if unlabeled is not None
                else ")"
            )
        )

    # worker time per GPU step over step time = workers per GPU
    per_step = bench["labeled_per_gpu"] / rates["labeled"]
    if unlabeled is not None:
        per_step += bench["unlabeled_per_gpu"] / rates["unlabeled"]
    workers = per_step / bench["gpu_step_s"]
    report["workers_per_gpu"] = round(workers, 2)
    print(
        f"  one GPU at {bench['gpu_step_s']} s per step with {bench['labeled_per_gpu']} labeled"
        + (f" + {bench['unlabeled_per_gpu']} unlabeled" if unlabeled is not None else "")
        + f" items needs {workers:.2f} workers ({per_step:.2f} worker-seconds per step)"
    )
    if unlabeled is not None and report["strong_views"] == "step":
        views = strong_views(unlabeled, get_class(cfg.method._target_).num_strong_views)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        seconds = strong_step_seconds(unlabeled, max(cfg.data.batch_size, 2), views, device)
        report[f"step_strong_ms_per_item_{device.type}"] = round(1000 * seconds, 1)
        print(
            f"  the step's batched strong views ({views} per item) on {device}: "
            f"{1000 * seconds:.1f} ms per item (paid in the training step)"
        )
    if bench["workers"] > 0:
        dataset = unlabeled if unlabeled is not None else labeled
        rate = loader_items_per_second(
            dataset, cfg.data.batch_size, bench["workers"], max(bench["items"] // 2, 2)
        )
        report["loader_items_per_s"] = round(rate, 3)
        print(
            f"  DataLoader, {bench['workers']} workers: {rate:.2f} items/s "
            f"({rate / bench['workers']:.2f} per worker; only meaningful with free cores)"
        )
    return report
