"""The active-learning loop simulated on the toy: train, select, "annotate" (the toy's unlabeled
lists carry their masks, so revealing them is free), train again; per strategy and seed.

    python -m semiseg.tools.select_loop --out DIR --strategies random,entropy --seeds 0,1 \
        --start 10 --pool 100 --budget 10 --rounds 2 [--jobs 2] [TRAIN OVERRIDES ...]

Round 0 trains on the first `start` labeled images of the toy's split 40 with the first `pool`
unlabeled images as the pool (shared by every strategy of a seed); each round then runs
select_images.py on the last run's best.ckpt and train.py on the split it wrote. Every command
is the one a user would type; DIR/loop.csv gets one row per (strategy, seed, labeled count) with
the best val mIoU, DIR/loop.png the learning curves (mean and spread over seeds) and
DIR/loop.md the table of means and standard deviations. `--jobs N` runs N (seed, strategy) chains
at once: the same commands, so the same figures, sooner on several cores. A stopped loop run again
with the same arguments continues: finished rounds are read from their files.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from semiseg.data import toy
from semiseg.data.splits import read_list, write_list, write_split
from semiseg.paths import checkout_dir

REPO = checkout_dir()


def run(script: str, *overrides: str) -> None:
    command = [sys.executable, str(REPO / script), *overrides]
    print("$", " ".join(command[1:]), flush=True)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def first_split(root: Path, out: Path, start: int, pool: int) -> Path:
    """out/splits0/<start>/ with the first `start` labeled and `pool` unlabeled images."""
    source = toy.ensure(root) / "splits"
    labeled = read_list(source / "40" / "labeled.txt", require_mask=True)[:start]
    unlabeled = read_list(source / "40" / "unlabeled.txt", require_mask=False)[:pool]
    folder = out / "splits0"
    write_split(folder, str(start), labeled, unlabeled)
    write_list(folder / "val.txt", read_list(source / "val.txt", require_mask=True))
    return folder


def loop(args, overrides: list[str]) -> list[dict]:
    out, root = Path(args.out).resolve(), Path(args.root).resolve()
    splits = first_split(root, out, args.start, args.pool)
    rows: list[dict] = []
    lock = threading.Lock()
    round0 = {seed: threading.Lock() for seed in args.seeds}  # shared by a seed's strategies

    def one_chain(task: tuple[int, str]) -> None:
        seed, strategy = task
        for row in chain(args, overrides, out, root, splits, seed, strategy, round0[seed]):
            with lock:  # every chain's rows, written as each round ends
                rows.append(row)
                write_csv(out / "loop.csv", sorted(rows, key=row_order))

    tasks = [(seed, strategy) for seed in args.seeds for strategy in args.strategies]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one_chain, tasks))  # list(): a failed chain raises here
    rows.sort(key=row_order)
    report(out, rows)
    return rows


def report(out: Path, rows: list[dict]) -> None:
    write_csv(out / "loop.csv", rows)
    plot(out / "loop.png", rows)
    (out / "loop.md").write_text(table(rows))


def row_order(row: dict) -> tuple:
    return (row["strategy"], row["seed"], row["labeled"])


def chain(args, overrides, out: Path, root: Path, splits: Path, seed: int, strategy, round0):
    """One seed and strategy: round 0 (trained once per seed, under `round0`, a lock), then the
    rounds; yields a row per trained run. A round whose files are complete (results.json,
    select.json) is read, not run again: a stopped loop continues where it stopped."""
    base = out / f"s{seed}" / "round0"
    common = [f"dataset.root={root}", f"seed={seed}", "logger=none", *overrides]
    with round0:
        train_once(base, *common, f"dataset.splits_dir={splits}", f"split={args.start}")
    yield {"strategy": strategy, "seed": seed, "labeled": args.start, "miou": best_miou(base)}
    last = base
    for k in range(1, args.rounds + 1):
        labeled = args.start + k * args.budget
        chosen = out / f"s{seed}" / strategy / f"select{k}"
        if not (chosen / "select.json").is_file():
            shutil.rmtree(chosen, ignore_errors=True)  # a selection cut short
            run(
                "select_images.py",
                f"ckpt_path={last / 'checkpoints' / 'best.ckpt'}",
                f"budget={args.budget}",
                f"strategy={strategy}",
                f"seed={seed}",
                f"output={chosen}",
                "label_studio=false",
                f"dataset.root={root}",
            )
        last = out / f"s{seed}" / strategy / f"round{k}"
        train_once(last, *common, f"dataset.splits_dir={chosen}", f"split={labeled}")
        yield {"strategy": strategy, "seed": seed, "labeled": labeled, "miou": best_miou(last)}


def train_once(run_dir: Path, *overrides: str) -> None:
    """train.py into run_dir, unless a finished run is there (a run cut short starts over)."""
    if (run_dir / "results.json").is_file():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    run("train.py", *overrides, f"hydra.run.dir={run_dir}")


def best_miou(run_dir: Path) -> float:
    return json.loads((run_dir / "results.json").read_text())["best_val_miou"]


def table(rows: list[dict]) -> str:
    """Markdown: one row per labeled count, per strategy the mean +- std (population, over
    seeds) of the best val mIoU, and the number of seeds."""
    import numpy as np

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    counts = sorted({r["labeled"] for r in rows})
    lines = [
        "| labeled images | " + " | ".join(strategies) + " |",
        "|---" * (len(strategies) + 1) + "|",
    ]
    for n in counts:
        cells = []
        for s in strategies:
            values = [r["miou"] for r in rows if r["strategy"] == s and r["labeled"] == n]
            cells.append(
                f"{np.mean(values):.2f} +- {np.std(values):.2f} ({len(values)})" if values else ""
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["strategy", "seed", "labeled", "miou"])
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, rows: list[dict]) -> None:
    """mIoU against labeled images: the mean over seeds, the band min..max."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        counts = sorted({r["labeled"] for r in rows if r["strategy"] == strategy})
        values = [
            [r["miou"] for r in rows if r["strategy"] == strategy and r["labeled"] == n]
            for n in counts
        ]
        mean = [float(np.mean(v)) for v in values]
        ax.plot(counts, mean, "o-", label=strategy)
        ax.fill_between(counts, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("best val mIoU (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/select_loop")
    parser.add_argument("--root", default="data/toy")
    parser.add_argument("--strategies", default="random,entropy", type=lambda s: s.split(","))
    parser.add_argument("--seeds", default="0", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--start", type=int, default=10)
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="(seed, strategy) chains at once")
    args, overrides = parser.parse_known_args(argv)
    for row in loop(args, overrides):
        print(
            f"{row['strategy']:>12} seed {row['seed']} {row['labeled']:>4} labeled: "
            f"{row['miou']:.2f}"
        )
    print((Path(args.out) / "loop.md").read_text())


if __name__ == "__main__":
    main()
