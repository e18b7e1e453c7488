"""Time training steps: python -m semiseg.tools.bench method=unimatch model.encoder=resnet101 \
    dataset.crop_size=321 data.batch_size=2 [bench.steps=5] [bench.precision=bf16] \
    [bench.channels_last=auto|true|false] [bench.compile=true] [bench.profile=true]

Composes the same config as train.py (any override works) and runs the method's own step outside
Lightning, so each phase can be timed: data loading, forwards (all of them, the no-grad partner
forward included), backward, optimizer step. A method with several optimizer steps per batch
(its class sets `several_steps_per_batch`; they are taken by `module.iteration`) is timed over its
whole iteration, its backward passes and optimizer steps summed. Prints seconds per step, images per second and peak memory. A benchmark, not a
test: nothing here asserts a speed.

Model compute: what the step would cost if it were nothing but its network calls. Forward hooks
on the method's networks record every call of the last step (inputs, grad mode, train/eval mode);
the bench then replays exactly those calls on the same tensors, at the same precision and memory
format, and runs one backward of the plain sum of the outputs that carry gradient: no data, no
losses, no pseudo-labels, no pasting. `step / compute` is the share of the step spent outside
the model. `bench.profile=true` adds a torch.profiler table of one more step.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from semiseg.data.batch import TrainBatch
from semiseg.paths import config_dir
from semiseg.run.build import build_data_and_method, resolve_channels_last


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
    """A method's whole iteration (`module.iteration`: all its optimizer steps of one batch),
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


class ForwardRecorder:
    """Records every call of the given networks during a step: (network, args, kwargs, grad
    enabled, train mode), so `replay` can run exactly those calls again."""

    def __init__(self, networks):
        self.calls: list[tuple] = []
        self.recording = True
        for network in networks:
            network.register_forward_hook(self._record, with_kwargs=True)

    @torch.compiler.disable  # bookkeeping, not part of a compiled model's graph
    def _record(self, network, args, kwargs, output):
        if not self.recording:
            return
        detach = lambda x: x.detach() if isinstance(x, torch.Tensor) else x  # noqa: E731
        self.calls.append(
            (
                network,
                tuple(detach(a) for a in args),
                {k: detach(v) for k, v in kwargs.items()},
                torch.is_grad_enabled(),
                network.training,
            )
        )

    @contextlib.contextmanager
    def paused(self):
        """No recording inside (the replay's own calls)."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True


def _tensors(output):
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for o in output for t in _tensors(o)]
    return []


def replay(calls, optimizer, autocast, device) -> tuple[float, float]:
    """The model compute of a recorded step: its network calls again, then one backward of the
    sum of the outputs with gradient. Returns (forwards, backward) seconds."""
    _sync(device)
    start = time.perf_counter()
    outputs = []
    with autocast:
        for network, args, kwargs, grad, training in calls:
            mode = network.training
            network.train(training)
            with torch.set_grad_enabled(grad):
                out = network(*args, **kwargs)
            network.train(mode)
            outputs += [t for t in _tensors(out) if t.requires_grad]
    _sync(device)
    middle = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    if outputs:
        sum(t.sum() for t in outputs).backward()
    _sync(device)
    return middle - start, time.perf_counter() - middle


BOOLEAN_KEYS = ("compile", "profile", "replay")


def _settings(overrides: list[str]) -> tuple[dict, list[str]]:
    """(bench.* settings, the other overrides for the config)."""
    bench = {
        "steps": 5,
        "warmup": 1,
        "precision": "32",
        "channels_last": None,  # default: trainer.channels_last (auto)
        "compile": None,  # default: trainer.compile
        "profile": False,
        "replay": True,  # false: no model-compute replay (half the time; memory tables)
        "device": "auto",
    }
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if not key.startswith("bench."):
            rest.append(item)
            continue
        key = key[6:]
        if key not in bench:
            raise SystemExit(f"bench.{key} is unknown: use one of {', '.join(bench)}")
        if key == "channels_last":
            bench[key] = value
        elif key in BOOLEAN_KEYS:
            bench[key] = value.lower() == "true"
        else:
            bench[key] = type(bench[key])(value)
    return bench, rest


def main(overrides: list[str]) -> dict:
    # (bench_eval imports this module)
    from semiseg.tools import bench_data, bench_eval, bench_vit

    # bench.data_only=true / bench.eval=true: the data pipeline / sliding-window inference alone;
    # bench.vit_table=true: DINOv2 + DPT memory and step time per precision and setting
    own = dict(item[6:].split("=", 1) for item in overrides if item.startswith("bench."))
    for flag, tool in (("data_only", bench_data), ("eval", bench_eval), ("vit_table", bench_vit)):
        if own.pop(flag, "false").lower() == "true":
            rest = [item for item in overrides if not item.startswith("bench.")]
            return tool.main(rest, own)
    tools = ("bench.data_only", "bench.eval", "bench.vit_table")
    overrides = [x for x in overrides if x.split("=")[0] not in tools]
    bench, rest = _settings(overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=rest, return_hydra_config=False)
    with open_dict(cfg):
        cfg.split = str(cfg.split)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if bench["device"] == "auto"
        else bench["device"]
    )
    half = bench["precision"] == "bf16"
    if bench["channels_last"] is None:
        bench["channels_last"] = cfg.trainer.get("channels_last", "auto")
    if bench["compile"] is None:
        bench["compile"] = bool(cfg.trainer.get("compile", False))
    channels_last = resolve_channels_last(bench["channels_last"], device.type, half)
    datamodule, module = build_data_and_method(
        cfg, channels_last=channels_last, compile=bench["compile"]
    )
    module = module.to(device)
    module.setup("fit")  # the module's own NHWC switch and compile, as in training
    module.train()
    optimizer = module.configure_optimizers()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if half else contextlib.nullcontext()
    )
    networks = [module.get_submodule(p) for p in dict.fromkeys(module.networks().values())]
    recorder = ForwardRecorder(networks)

    loaders = datamodule.train_dataloader()
    if isinstance(loaders, dict):
        iterators = {k: iter(v) for k, v in loaders.items()}
        next_batch = lambda: {k: next(it) for k, it in iterators.items()}  # noqa: E731
    else:
        iterator = iter(loaders)
        next_batch = lambda: next(iterator)  # noqa: E731

    def step() -> tuple[float, float, float, float]:
        """One training step; returns its data, forward, backward and optimizer seconds."""
        recorder.calls = []  # only the latest step's calls are kept (their inputs too)
        t0 = time.perf_counter()
        with record_function("## data"):
            batch = TrainBatch.parse(_to(next_batch(), device))
            _sync(device)
        t1 = time.perf_counter()
        if module.several_steps_per_batch:  # its `iteration` takes them all
            t2, t3 = _iteration(module, batch, optimizer, autocast, device, t1)
        else:
            with record_function("## forward phase"), autocast:
                loss = module.training_losses(batch)["loss"]
                _sync(device)
            t2 = time.perf_counter()
            with record_function("## backward phase"):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                _sync(device)
            t3 = time.perf_counter()
            with record_function("## optimizer phase"):
                optimizer.step()
                module.after_optimizer_step()  # e.g. a teacher's EMA update: part of the step
        _sync(device)
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    # Each step is followed by the replay of its network calls (its model compute): on a shared
    # machine both see the same load, so their ratio holds even when the absolute times drift.
    phases = {"data": [], "forward": [], "backward": [], "optimizer": []}
    compute = {"forwards": [], "backward": []}
    ratios = []  # each step without data over its own replay
    total = bench["warmup"] + bench["steps"]
    for i in range(total):
        times = step()
        calls = recorder.calls
        forwards = backward = 0.0
        if bench["replay"]:
            with recorder.paused():
                forwards, backward = replay(calls, optimizer, autocast, device)
        if i >= bench["warmup"]:
            for name, dt in zip(phases, times, strict=True):
                phases[name].append(dt)
            compute["forwards"].append(forwards)
            compute["backward"].append(backward)
            if bench["replay"]:
                ratios.append(sum(times[1:]) / (forwards + backward))
        warm = " (warm-up)" if i < bench["warmup"] else ""
        print(
            f"step {i + 1}/{total}: {sum(times):.2f} s, model compute {forwards + backward:.2f} s"
            f"{warm}",
            flush=True,
        )
    optimizer.zero_grad(set_to_none=True)

    mean = {k: sum(v) / len(v) for k, v in phases.items()}
    step_s = sum(mean.values())
    compute_mean = {k: sum(v) / len(v) for k, v in compute.items()}
    compute_s = sum(compute_mean.values())
    images = cfg.data.batch_size * (2 if module.uses_unlabeled else 1)
    report = {
        "method": cfg.method.name,
        "encoder": cfg.model.encoder,
        "crop": cfg.dataset.crop_size,
        "batch": cfg.data.batch_size,
        "precision": bench["precision"],
        "channels_last": channels_last,
        "compile": bench["compile"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        **{f"{k}_s": round(v, 3) for k, v in mean.items()},
        "step_s": round(step_s, 3),
        "images_per_s": round(images / step_s, 2),
        "model_forwards": len(calls),
        "compute_forwards_s": round(compute_mean["forwards"], 3),
        "compute_backward_s": round(compute_mean["backward"], 3),
        "compute_s": round(compute_s, 3),
        # the training step without data loading (the data pipeline's own concern) over compute
        "step_over_compute": round((step_s - mean["data"]) / compute_s, 3) if compute_s else None,
        # the median of the per-step ratios: one step slowed by a load spike does not move it
        "step_over_compute_median": round(statistics.median(ratios), 3) if ratios else None,
        "peak_memory_mb": round(_peak_memory_mb(device)),
    }
    print(
        f"\n{report['method']} {report['encoder']} crop {report['crop']} batch {report['batch']} "
        f"({'labeled + unlabeled' if module.uses_unlabeled else 'labeled'}), "
        f"precision {report['precision']}, channels_last {channels_last}, "
        f"compile {bench['compile']}, {device}, {report['threads']} threads, "
        f"mean of {bench['steps']} steps:"
    )
    for k in phases:
        print(f"  {k:<10} {mean[k]:7.3f} s")
    print(
        f"  {'step':<10} {step_s:7.3f} s   {report['images_per_s']} images/s   "
        f"peak memory {report['peak_memory_mb']} MB"
    )
    print(
        f"  model compute {compute_s:.3f} s ({len(calls)} network calls "
        f"{compute_mean['forwards']:.3f} s, backward {compute_mean['backward']:.3f} s), "
        f"step without data / compute = {report['step_over_compute']} "
        f"(median of the steps' own ratios {report['step_over_compute_median']})"
    )
    if bench["profile"]:
        replay_calls = lambda: replay(recorder.calls, optimizer, autocast, device)  # noqa: E731
        report["profile"] = profile_step(step, replay_calls, recorder, networks, device)
    return report


def profile_step(step, replay_calls, recorder, networks, device) -> str:
    """torch.profiler over one more step: the top ops by self time, then where the forward
    phase's time outside the model's calls and the backward phase's time go, by op."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ranges = []  # each network call as a "## model" range, to tell model ops from the rest

    def enter(network, args):
        ranges.append(record_function("## model"))
        ranges[-1].__enter__()

    def leave(network, args, output):
        ranges.pop().__exit__(None, None, None)

    hooks = [
        h
        for n in networks
        for h in (n.register_forward_pre_hook(enter), n.register_forward_hook(leave))
    ]
    with profile(activities=activities) as prof:
        step()
    for hook in hooks:
        hook.remove()
    with recorder.paused(), profile(activities=activities) as prof_compute:
        replay_calls()
    on_gpu = device.type == "cuda"
    sort = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    summary = outside_model_summary(prof.events(), on_gpu)
    summary += "\n" + step_minus_compute(prof.key_averages(), prof_compute.key_averages(), on_gpu)
    print("\nprofile of one step (self time: in the op itself, not in the ops it calls)")
    print(table)
    print(summary)
    return table + "\n" + summary


def step_minus_compute(step_ops, compute_ops, on_gpu: bool, top: int = 15) -> str:
    """Self time per op in the step minus in the replay of its network calls: where the time
    the step spends beyond its model compute goes, op by op (largest first)."""
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    compute = {e.key: getattr(e, key) for e in compute_ops}
    extra = {e.key: getattr(e, key) - compute.get(e.key, 0.0) for e in step_ops}
    extra = {k: v for k, v in extra.items() if not k.startswith(("## ", "ProfilerStep"))}
    lines = [f"step minus model compute, self time by op: {sum(extra.values()) / 1e6:+.3f} s"]
    for name, us in sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:top]:
        lines.append(f"  {us / 1e6:+8.3f} s  {name}")
    return "\n".join(lines)


def outside_model_summary(events, on_gpu: bool = False, top: int = 12) -> str:
    """Seconds of the forward phase in the model's calls and outside them (by top-level op), and
    of the backward phase (by autograd node), largest first; CPU time, or GPU time on a GPU."""
    model = 0.0
    glue: dict[str, float] = {}
    backward: dict[str, float] = {}
    for event in events:
        spent = event.device_time_total if on_gpu else event.cpu_time_total
        parent = event.cpu_parent
        if parent is None or not parent.name.startswith("## "):
            continue
        if parent.name == "## forward phase":
            if event.name == "## model":
                model += spent
            else:
                glue[event.name] = glue.get(event.name, 0.0) + spent
        elif parent.name == "## backward phase":
            backward[event.name] = backward.get(event.name, 0.0) + spent
    lines = [f"forward phase: model calls {model / 1e6:.3f} s"]
    for title, table in (("outside the model", glue), ("backward phase", backward)):
        lines.append(f"{title}: {sum(table.values()) / 1e6:.3f} s")
        for name, us in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {us / 1e6:8.3f} s  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
