"""Time training steps: python -m semiseg.bench method=unimatch model.encoder=resnet101 \
    dataset.crop_size=321 data.batch_size=2 [bench.steps=5] [bench.precision=bf16] [bench.channels_last=true]

Composes the same config as train.py (any override works) and runs the method's own step outside
Lightning, so each phase can be timed: data loading, forwards (all of them, the no-grad partner
forward included), backward, optimizer step. A method with several optimizer steps per batch
(FST: `module.iteration`) is timed over its whole iteration, its backward passes and optimizer
steps summed. Prints seconds per step, images per second and peak memory. A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import importlib
import resource
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from semiseg.runner import build_data_and_method

CONF = Path(__file__).resolve().parents[2] / "conf"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def _iteration(module, batch, optimizer, autocast, device, t1: float) -> tuple[float, float]:
    """A method's whole iteration (`module.iteration`, FST: K virtual steps and the real one),
    its backward passes and optimizer steps timed inside its step callback; everything else
    (forwards, EMA updates, snapshots) is counted as forward. Returns the t2, t3 that split the
    time from t1 into forward, backward and optimizer as for a one-step method."""
    spent = {"backward": 0.0, "optimizer": 0.0}

    def step(loss, final):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=False):
            loss.backward()
        _sync(device)
        middle = time.perf_counter()
        optimizer.step()
        _sync(device)
        spent["backward"] += middle - start
        spent["optimizer"] += time.perf_counter() - middle

    with autocast:
        module.iteration(batch, optimizer, step)
    _sync(device)
    forward = time.perf_counter() - t1 - spent["backward"] - spent["optimizer"]
    return t1 + forward, t1 + forward + spent["backward"]


def main(overrides: list[str]) -> dict:
    # bench.data_only=true / bench.eval=true: the data pipeline / sliding-window inference alone
    own = dict(item[6:].split("=", 1) for item in overrides if item.startswith("bench."))
    for flag, name in (("data_only", "bench_data"), ("eval", "bench_eval")):
        if own.pop(flag, "false").lower() == "true":
            rest = [item for item in overrides if not item.startswith("bench.")]
            return importlib.import_module(f"semiseg.{name}").main(rest, own)
    overrides = [x for x in overrides if x.split("=")[0] not in ("bench.data_only", "bench.eval")]
    bench = {"steps": 5, "warmup": 1, "precision": "32", "channels_last": False, "device": "auto"}
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("bench."):
            bench[key[6:]] = (
                type(bench[key[6:]])(value)
                if key[6:] != "channels_last"
                else value.lower() == "true"
            )
        else:
            rest.append(item)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=rest, return_hydra_config=False)
    with open_dict(cfg):
        cfg.split = str(cfg.split)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if bench["device"] == "auto"
        else bench["device"]
    )
    datamodule, module = build_data_and_method(cfg, channels_last=bench["channels_last"])
    module = module.to(device)
    module.setup("fit")  # the module's own NHWC switch: weights and every forward's input
    module.train()
    optimizer = module.configure_optimizers()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if bench["precision"] == "bf16"
        else contextlib.nullcontext()
    )

    loaders = datamodule.train_dataloader()
    if isinstance(loaders, dict):
        iterators = {k: iter(v) for k, v in loaders.items()}
        next_batch = lambda: {k: next(it) for k, it in iterators.items()}  # noqa: E731
    else:
        iterator = iter(loaders)
        next_batch = lambda: next(iterator)  # noqa: E731

    phases = {"data": [], "forward": [], "backward": [], "optimizer": []}
    total = bench["warmup"] + bench["steps"]
    for step in range(total):
        t0 = time.perf_counter()
        batch = _to(next_batch(), device)
        _sync(device)
        t1 = time.perf_counter()
        if hasattr(module, "iteration"):  # several optimizer steps per batch (FST)
            t2, t3 = _iteration(module, batch, optimizer, autocast, device, t1)
        else:
            with autocast:
                loss = module.training_losses(batch)["loss"]
            _sync(device)
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sync(device)
            t3 = time.perf_counter()
            optimizer.step()
            module.after_optimizer_step()  # e.g. a teacher's EMA update: part of the step's cost
        _sync(device)
        t4 = time.perf_counter()
        if step >= bench["warmup"]:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name].append(dt)
        print(
            f"step {step + 1}/{total}: {t4 - t0:.2f} s"
            + (" (warm-up)" if step < bench["warmup"] else "")
        )

    mean = {k: sum(v) / len(v) for k, v in phases.items()}
    step_s = sum(mean.values())
    images = cfg.data.batch_size * (2 if module.uses_unlabeled else 1)
    report = {
        "method": cfg.method.name,
        "encoder": cfg.model.encoder,
        "crop": cfg.dataset.crop_size,
        "batch": cfg.data.batch_size,
        "precision": bench["precision"],
        "channels_last": bench["channels_last"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        **{f"{k}_s": round(v, 3) for k, v in mean.items()},
        "step_s": round(step_s, 3),
        "images_per_s": round(images / step_s, 2),
        "peak_memory_mb": round(_peak_memory_mb(device)),
    }
    print(
        f"\n{report['method']} {report['encoder']} crop {report['crop']} batch {report['batch']} "
        f"({'labeled + unlabeled' if module.uses_unlabeled else 'labeled'}), "
        f"precision {report['precision']}, channels_last {report['channels_last']}, {device}, "
        f"{report['threads']} threads, mean of {bench['steps']} steps:"
    )
    for k in phases:
        print(f"  {k:<10} {mean[k]:7.3f} s")
    print(
        f"  {'step':<10} {step_s:7.3f} s   {report['images_per_s']} images/s   "
        f"peak memory {report['peak_memory_mb']} MB"
    )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
