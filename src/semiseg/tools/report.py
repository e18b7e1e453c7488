"""The paper table of a sweep: python -m semiseg.tools.report SWEEP_DIR [--metric ...] [--out DIR]

Reads every run under SWEEP_DIR (a `python train.py -m ...` folder, or any folder of runs such as
outputs/) and writes, next to them or into --out:

- report.md: per dataset, methods as rows and splits (labeled counts) as columns, each cell the
  mean +- sample standard deviation over seeds of the score of the runs' best.ckpt (the mIoU;
  ACDC's mean Dice, change detection's changed IoU: what selected best.ckpt);
- report.csv: the same numbers, one row per method and split, with the seeds behind them;
- report.png: mIoU against the labeled count, one line per method, the std as error bars.

Where the folder holds the baseline method (`--baseline`, default supervised), report.md adds
each method's gain over it paired by seed: the mean +- std of (method - baseline) over the seeds
both have. A seed that is hard for every method moves all of them alike; pairing takes that out,
so the gains are steadier than the differences of the means (toy split 10: supervised moves 4.8
points from seed 0 to seed 1).

With --per-seed, report.md also gets one table per dataset and split with every seed's value as
a column, then the mean +- std and the paired gain: the seeds table of docs/results.md.

Runs that differ in any other override (their `.hydra/overrides.yaml`, e.g. a sweep over
method.tau or model.encoder) are not merged: each value gets its own row, and the override is a
column of the table. Overrides that cannot change the result (paths, logging, workers, resume)
are not compared.

A run is a folder with Hydra's `.hydra/` record. One with a results.json holding a validation
counts; one without (it failed, or has not finished) is listed as failed. When the sweep's
multirun.yaml names the grid (method=..., split=..., seed=...), combinations that never started
are listed as missing. A cell short of runs says which seeds it lacks and why.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

GRID_KEYS = ("dataset", "method", "split", "seed")
# Overrides that do not change what is trained: runs differing only in these are the same run.
NOT_COMPARED = (
    "resume",
    "dataset.root",
    "data.num_workers",
    "logger",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every",
)
NOT_COMPARED_PREFIXES = ("hydra.", "logger.")
METRIC_NAMES = {
    "best_val_score": "best.ckpt's score",
    "best_val_miou": "best.ckpt's mIoU",
    "val_miou": "last val mIoU",
}
# best_val_score is the score that selected best.ckpt: its task's selection metric.
SELECTION_NAMES = {"miou": "mIoU", "mean_dice": "mean Dice", "iou_changed": "changed IoU"}


def metric_name(metric: str, selection: str | None) -> str:
    """The table's title for a metric; best_val_score names the selection metric it stands for."""
    if metric == "best_val_score" and selection in SELECTION_NAMES:
        return f"best val {SELECTION_NAMES[selection]}"
    return METRIC_NAMES[metric]


@dataclass
class Run:
    dataset: str
    method: str
    split: str
    seed: str
    value: float | None  # None: failed or unfinished
    path: Path
    mtime: float = 0.0
    overrides: dict[str, str] = field(default_factory=dict)
    variant: tuple[str, ...] = ()  # values of the overrides that vary within the folder
    selection: str = "miou"  # the score that selected the run's best.ckpt (its task's)


@dataclass
class Cell:
    values: dict[str, float] = field(default_factory=dict)  # seed -> metric
    failed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else None

    @property
    def expected(self) -> int:
        return len(self.values) + len(self.failed) + len(self.missing)


# ---------------------------------------------------------------------------- reading runs
def find_runs(root: Path, metric: str = "best_val_score") -> list[Run]:
    """Every training run under `root`: one per folder holding a `.hydra/` record."""
    runs = []
    for hydra_dir in sorted(Path(root).rglob(".hydra")):
        run_dir = hydra_dir.parent
        config = _load_yaml(hydra_dir / "config.yaml") or {}
        if "ckpt_path" in config:  # an eval.py run
            continue
        overrides = _overrides(hydra_dir)
        results_path = run_dir / "results.json"
        results = _load_json(results_path) if results_path.is_file() else None
        selection = "miou"
        if results is not None and "best_val_miou" in results:
            key = {k: results.get(k) for k in GRID_KEYS}
            value = results.get(metric)
            if metric == "best_val_score" and "best_val_score" not in results:
                value = results.get("best_val_miou")  # written before tasks chose best.ckpt
            selection = results.get("selection", "miou")
            mtime = results_path.stat().st_mtime
        else:
            key, value, mtime = _job_identity(hydra_dir, config), None, 0.0
        runs.append(
            Run(
                dataset=str(key["dataset"]),
                method=str(key["method"]),
                split=str(key["split"]),
                seed=str(key["seed"]),
                value=None if value is None else float(value),
                path=run_dir,
                mtime=mtime,
                overrides=overrides,
                selection=selection,
            )
        )
    keys = varying_keys(runs)
    for run in runs:
        run.variant = tuple(run.overrides.get(k, "default") for k in keys)
    return runs


def _overrides(hydra_dir: Path) -> dict[str, str]:
    """A job's command-line overrides, key -> value (`+key=v` as key, `~key` as deleted)."""
    overrides = {}
    for item in _load_yaml(hydra_dir / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = "deleted" if key.startswith("~") else value
    return overrides


def varying_keys(runs: list[Run]) -> list[str]:
    """The overrides, other than the grid keys, whose value is not the same in every run."""
    keys = sorted({k for run in runs for k in run.overrides})
    return [
        k
        for k in keys
        if k not in GRID_KEYS
        and k not in NOT_COMPARED
        and not k.startswith(NOT_COMPARED_PREFIXES)
        and len({run.overrides.get(k) for run in runs}) > 1
    ]


def _job_identity(hydra_dir: Path, config: dict) -> dict:
    """dataset, method, split and seed of a run without results: its overrides, else its config."""
    overrides = _overrides(hydra_dir)
    method = overrides.get("method") or (config.get("method") or {}).get("name", "?")
    dataset = overrides.get("dataset") or (config.get("dataset") or {}).get("name", "?")
    split = overrides.get("split") or _resolve_split(hydra_dir / "config.yaml")
    seed = overrides.get("seed", config.get("seed", "?"))
    return {"dataset": dataset, "method": method, "split": split, "seed": seed}


def _resolve_split(config_path: Path) -> str:
    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.select(OmegaConf.load(config_path), "split"))
    except Exception:  # an interpolation this process cannot resolve
        return "?"


def expected_grid(root: Path) -> dict[str, list[str]]:
    """The values a sweep was asked to run, per grid key, from its multirun.yaml (if any)."""
    path = Path(root) / "multirun.yaml"
    if not path.is_file():
        return {}
    task = ((_load_yaml(path) or {}).get("hydra") or {}).get("overrides", {}).get("task") or []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    grid: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides([str(t) for t in task]):
        key = override.get_key_element().lstrip("+~")
        if key not in GRID_KEYS:
            continue
        try:
            if override.is_sweep_override():
                grid[key] = [str(v) for v in override.sweep_string_iterator()]
            else:
                grid[key] = [override.get_value_element_as_str()]
        except Exception:  # glob(...) over a config group: take the values found on disk
            continue
    return grid


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------- the table
def build_table(runs: list[Run], grid: dict[str, list[str]]) -> dict[str, dict]:
    """{dataset: {"keys": [...], "rows": [...], "splits": [...], "cells": {(row, split): Cell}}};
    a row is (method, values of the varying `keys`)."""
    keys = varying_keys(runs)
    latest: dict[tuple, Run] = {}
    for run in runs:  # a finished run beats a failed one; a later one beats an earlier one
        key = (run.dataset, (run.method, run.variant), run.split, run.seed)
        old = latest.get(key)
        if old is None or (run.value is not None, run.mtime) > (old.value is not None, old.mtime):
            latest[key] = run
    datasets = _ordered(grid.get("dataset"), [r.dataset for r in latest.values()])
    tables = {}
    for dataset in datasets:
        mine = [r for r in latest.values() if r.dataset == dataset]
        methods = _ordered(grid.get("method"), [r.method for r in mine])
        splits = _ordered(grid.get("split"), [r.split for r in mine], numeric=True)
        seeds = _ordered(grid.get("seed"), [r.seed for r in mine], numeric=True)
        found = sorted({(r.method, r.variant) for r in mine}, key=lambda row: row[1])
        rows = []
        for method in methods:  # a method of the grid that never ran still gets its row
            rows += [row for row in found if row[0] == method] or [(method, ("",) * len(keys))]
        cells = {}
        for row in rows:
            for split in splits:
                cell = Cell()
                for seed in seeds:
                    run = latest.get((dataset, row, split, seed))
                    if run is None:
                        cell.missing.append(seed)
                    elif run.value is None:
                        cell.failed.append(seed)
                    else:
                        cell.values[seed] = run.value
                cells[(row, split)] = cell
        selections = {r.selection for r in mine if r.value is not None}
        tables[dataset] = {
            "keys": keys,
            "rows": rows,
            "splits": splits,
            "cells": cells,
            "selection": selections.pop() if len(selections) == 1 else None,
        }
    return tables


def row_label(table: dict, row: tuple) -> str:
    """The method, and the varying overrides of its row (`unimatch method.tau=0.9`)."""
    method, values = row
    return " ".join([method, *(f"{k}={v}" for k, v in zip(table["keys"], values, strict=True))])


def _ordered(first: list[str] | None, found: list[str], numeric: bool = False) -> list[str]:
    """The grid's order, then values found only on disk (numerically where they are numbers)."""
    out = list(dict.fromkeys(first or []))
    rest = sorted(set(found) - set(out), key=lambda v: _sort_key(v) if numeric else v)
    if numeric and not first:
        return rest
    return out + rest


def _sort_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def report(
    root: Path,
    out: Path | None = None,
    metric: str = "best_val_score",
    baseline: str | None = "supervised",
    per_seed: bool = False,
) -> str:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: give a sweep folder (multirun/...)")
    runs = find_runs(root, metric)
    if not runs:
        raise FileNotFoundError(f"no runs under {root}: no folder with a .hydra/ record")
    tables = build_table(runs, expected_grid(root))
    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    from semiseg.tools.report_output import plot, to_markdown, write_csv

    markdown = to_markdown(tables, metric, baseline, per_seed)
    (out / "report.md").write_text(markdown)
    write_csv(tables, out / "report.csv")
    plot(tables, out / "report.png", metric)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg.tools.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, or any folder of runs")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: sweep_dir)"
    )
    parser.add_argument(
        "--metric",
        default="best_val_score",
        choices=list(METRIC_NAMES),
        help="best.ckpt's score by its task's selection metric (default: the mIoU of natural "
        "images, ACDC's mean Dice, the changed IoU), best.ckpt's mIoU, or the last mIoU",
    )
    parser.add_argument(
        "--baseline",
        default="supervised",
        help="the method the gains are paired against, seed by seed (none: no gain table)",
    )
    parser.add_argument(
        "--per-seed",
        action="store_true",
        help="also a table per split with each seed's value as a column",
    )
    args = parser.parse_args(argv)
    baseline = None if args.baseline.lower() == "none" else args.baseline
    try:
        markdown = report(args.sweep_dir, args.out, args.metric, baseline, args.per_seed)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    print(markdown)
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
