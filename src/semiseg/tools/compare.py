"""Train supervised, FixMatch and UniMatch on the same split, seed and step budget, then write a
Markdown table and a plot of val mIoU over steps.

    python -m semiseg.tools.compare [--out DIR] [methods=supervised,fixmatch,unimatch] [OVERRIDES ...]

`methods=` (or `--methods`) lists any of supervised, fixmatch, unimatch, meanteacher, imas, augseg,
fst (FST takes K + 1 optimizer steps per step counted, so about 4x the time),
css.

Any train.py override can follow (e.g. split=20 trainer.max_steps=300). The runs go through
train.py itself (Hydra multirun, one after another), so they are exactly what a user would run.
Without a `split=` override the comparison runs on split 10, where the toy recipe shows the gap
(see docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from semiseg.paths import checkout_dir

REPO = checkout_dir()  # train.py and outputs/ live there
DEFAULT_SPLIT = 10


def with_defaults(overrides: list[str]) -> list[str]:
    """The user's overrides, led by split=DEFAULT_SPLIT unless they choose a split."""
    if any(o.lstrip("+~").startswith("split=") for o in overrides):
        return list(overrides)
    return [f"split={DEFAULT_SPLIT}", *overrides]


def split_methods(overrides: list[str], default: str) -> tuple[list[str], list[str]]:
    """(methods, the other overrides): `methods=a,b` is this command's own argument."""
    methods = default
    rest = []
    for item in overrides:
        if item.startswith("methods="):
            methods = item.split("=", 1)[1]
        else:
            rest.append(item)
    return [m for m in methods.split(",") if m], rest


def run_sweep(out: Path, methods: list[str], overrides: list[str]) -> None:
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        f"method={','.join(methods)}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${method.name}",
        *overrides,
    ]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def collect(out: Path, methods: list[str]) -> dict[str, dict]:
    results = {}
    for method in methods:
        path = out / method / "results.json"
        results[method] = json.loads(path.read_text()) if path.is_file() else None
    return results


def markdown_table(results: dict[str, dict | None]) -> str:
    base = (results.get("supervised") or {}).get("best_val_miou")
    lines = [
        "| method | split | steps | best val mIoU | last val mIoU | vs supervised | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        if r is None:
            lines.append(f"| {method} | - | - | missing | missing | - | - |")
            continue
        gain = f"{r['best_val_miou'] - base:+.2f}" if base is not None else "-"
        lines.append(
            f"| {method} | {r['split']} | {r['steps']} | {r['best_val_miou']:.2f} | "
            f"{r['val_miou']:.2f} | {gain} | {r['wall_time_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict | None], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, r in results.items():
        if r and r["val_history"]:
            steps = [h["step"] for h in r["val_history"]]
            ax.plot(steps, [h["miou"] for h in r["val_history"]], marker="o", label=method)
    ax.set_xlabel("training step")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "compare")
    parser.add_argument("--methods", default="supervised,fixmatch,unimatch")
    parser.add_argument("--report-only", action="store_true", help="only rebuild table and plot")
    args, overrides = parser.parse_known_args(argv)
    methods, overrides = split_methods(overrides, args.methods)
    out = args.out.resolve()
    if not args.report_only:
        run_sweep(out, methods, with_defaults(overrides))
    results = collect(out, methods)
    table = markdown_table(results)
    first = next((r for r in results.values() if r), None)
    title = f"toy split {first['split']}, seed {first['seed']}" if first else "no results"
    (out / "compare.md").write_text(table + "\n")
    plot(results, out / "compare.png", title)
    print(table)
    print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")


if __name__ == "__main__":
    main()
