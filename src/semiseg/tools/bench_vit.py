"""Peak memory and step time of a DINOv2 + DPT training step (UniMatch V2 by default), per encoder
size, precision, activation checkpointing of the ViT blocks and frozen backbone:

    make bench ARGS="bench.vit_table=true [bench.encoders=dinov2_small,dinov2_base] [bench.crop=518]
        [bench.batches=1,2] [bench.precisions=32,bf16] [bench.steps=2] [method=...]"

Each setting runs `semiseg.tools.bench` (the method's own step, outside Lightning, on the toy
data padded to the crop, random weights, AdamW) in a process of its own, because on a CPU the
peak memory is the process's peak RSS; on a GPU it is the CUDA allocator's peak. Each setting
runs at two batch sizes: peak memory is close to linear in the batch (a fixed part: weights,
gradients, AdamW state, the framework; a part per image: activations), so the two points give
the memory per image and the largest batch per device that fits 24 / 40 / 80 GB. The time is the
mean step after one warm-up step (`bench.steps`), at the first batch size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from semiseg.errors import ConfigError

DEFAULTS = {
    "encoders": "dinov2_small,dinov2_base",
    "crop": 518,
    "batches": "1,2",
    "precisions": "32,bf16",
    "steps": 2,
    "settings": "plain,checkpointing,frozen",
}
# setting -> its model overrides
SETTINGS = {
    "plain": ["model.checkpointing=false", "model.freeze_backbone=false"],
    "checkpointing": ["model.checkpointing=true", "model.freeze_backbone=false"],
    "frozen": ["model.checkpointing=false", "model.freeze_backbone=true"],
}
CAPACITIES_GB = (24, 40, 80)
MARK = "BENCH_REPORT "


def _one_run(overrides: list[str]) -> dict:
    """`semiseg.tools.bench` in a fresh process; its report."""
    code = (
        "import json, sys; from semiseg.tools.bench import main; "
        f"print({MARK!r} + json.dumps(main(sys.argv[1:])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0]}


def largest_batch(batches, peaks_mb, capacity_gb: float) -> tuple[float, int]:
    """(MB per image, the largest batch under `capacity_gb`) from two (batch, peak) points."""
    (b1, m1), (b2, m2) = zip(batches, peaks_mb, strict=True)
    per_image = max((m2 - m1) / (b2 - b1), 1e-9)
    return per_image, max(0, int((capacity_gb * 1024 - (m1 - per_image * b1)) // per_image))


def _list(value) -> list[str]:
    return [v for v in str(value).split(",") if v]


def main(overrides: list[str], bench_overrides: dict | None = None) -> list[dict]:
    bench = dict(DEFAULTS)
    for key, value in (bench_overrides or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"bench.{key} is unknown here: use one of {', '.join(DEFAULTS)}")
        bench[key] = type(DEFAULTS[key])(value)
    batches = [int(b) for b in _list(bench["batches"])]
    if len(batches) != 2 or batches[0] == batches[1]:
        raise ConfigError(f"bench.batches={bench['batches']}: give two batch sizes, e.g. 1,2")
    unknown = [s for s in _list(bench["settings"]) if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"bench.settings: {unknown} unknown; choose from {', '.join(SETTINGS)}")
    base = [
        "experiment=dpt_toy",  # DINOv2 + DPT, AdamW, scratch weights, the toy data
        "method=unimatch_v2",
        *("model.embed_dim=null", "model.depth=null", "model.num_heads=null"),
        f"dataset.crop_size={bench['crop']}",
        "data.num_workers=0",
        f"bench.steps={bench['steps']}",
        "bench.warmup=1",
        "bench.replay=false",
        *overrides,
    ]
    rows = []
    for encoder in _list(bench["encoders"]):
        for precision in _list(bench["precisions"]):
            for setting in _list(bench["settings"]):
                reports = [
                    _one_run(
                        [
                            *base,
                            f"model.encoder={encoder}",
                            f"bench.precision={precision}",
                            f"data.batch_size={b}",
                            *SETTINGS[setting],
                        ]
                    )
                    for b in batches
                ]
                row = {"encoder": encoder, "precision": precision, "setting": setting}
                if any("error" in r for r in reports):
                    row["error"] = next(r["error"] for r in reports if "error" in r)
                else:
                    peaks = [r["peak_memory_mb"] for r in reports]
                    row.update(
                        device=reports[0]["device"],
                        threads=reports[0]["threads"],
                        step_s=reports[0]["step_s"],
                        peak_mb=peaks,
                    )
                    for gb in CAPACITIES_GB:
                        row["mb_per_image"], row[f"max_batch_{gb}gb"] = largest_batch(
                            batches, peaks, gb
                        )
                rows.append(row)
                print(_line(row, batches, bench["crop"]), flush=True)
    print("\n" + table(rows, batches, bench["crop"]))
    return rows


def _line(row: dict, batches, crop) -> str:
    head = f"{row['encoder']} crop {crop} {row['precision']} {row['setting']}"
    if "error" in row:
        return f"{head}: failed ({row['error']})"
    peaks = " / ".join(f"{m} MB" for m in row["peak_mb"])
    return f"{head}: step {row['step_s']} s at batch {batches[0]}, peak {peaks} at {batches}"


def table(rows: list[dict], batches, crop) -> str:
    """The markdown table of docs/speed.md."""
    lines = [
        f"| encoder | crop | precision | setting | step s (batch {batches[0]}) | peak MB at batch "
        f"{batches[0]} / {batches[1]} | MB per image | largest batch in "
        + " / ".join(f"{gb}" for gb in CAPACITIES_GB)
        + " GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['encoder']} | {crop} | {row['precision']} | {row['setting']} "
                         f"| failed: {row['error']} | | | |")  # fmt: skip
            continue
        fits = " / ".join(str(row[f"max_batch_{gb}gb"]) for gb in CAPACITIES_GB)
        lines.append(
            f"| {row['encoder']} | {crop} | {row['precision']} | {row['setting']} "
            f"| {row['step_s']} | {row['peak_mb'][0]} / {row['peak_mb'][1]} "
            f"| {row['mb_per_image']:.0f} | {fits} |"
        )
    return "\n".join(lines)
