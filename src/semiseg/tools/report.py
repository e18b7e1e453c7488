"""The paper table of a sweep: python -m semiseg.tools.report SWEEP_DIR [--metric best_val_miou] [--out DIR]

Reads every run under SWEEP_DIR (a `python train.py -m ...` folder, or any folder of runs such as
outputs/) and writes, next to them or into --out:

- report.md: per dataset, methods as rows and splits (labeled counts) as columns, each cell the
  mean +- sample standard deviation over seeds of the runs' best validation mIoU;
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
import csv
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
METRIC_NAMES = {"best_val_miou": "best val mIoU", "val_miou": "last val mIoU"}


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
def find_runs(root: Path, metric: str = "best_val_miou") -> list[Run]:
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
        if results is not None and "best_val_miou" in results:
            key = {k: results.get(k) for k in GRID_KEYS}
            value = results.get(metric)
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
        tables[dataset] = {"keys": keys, "rows": rows, "splits": splits, "cells": cells}
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


def cell_text(cell: Cell) -> str:
    if not cell.values:
        if cell.failed:
            return f"failed (seed {', '.join(cell.failed)})"
        return "missing"
    text = f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f} ± {cell.std:.2f}"
    notes = []
    if len(cell.values) < cell.expected:
        notes.append(f"{len(cell.values)}/{cell.expected}")
    if cell.failed:
        notes.append(f"seed {', '.join(cell.failed)} failed")
    if cell.missing:
        notes.append(f"seed {', '.join(cell.missing)} missing")
    return f"{text} ({'; '.join(notes)})" if notes else text


def paired_gain(cell: Cell, base: Cell) -> Cell:
    """The cell's gain over the baseline's cell seed by seed, on the seeds both have; a seed
    either lacks is missing from the gain."""
    seeds = list(dict.fromkeys([*cell.values, *cell.failed, *cell.missing]))
    shared = [seed for seed in seeds if seed in cell.values and seed in base.values]
    return Cell(
        values={seed: cell.values[seed] - base.values[seed] for seed in shared},
        missing=[seed for seed in seeds if seed not in shared],
    )


def gain_text(gain: Cell) -> str:
    if not gain.values:
        return "no shared seed"
    text = f"{gain.mean:+.2f}" if gain.std is None else f"{gain.mean:+.2f} ± {gain.std:.2f}"
    return text if not gain.missing else f"{text} ({len(gain.values)}/{gain.expected} seeds)"


def baseline_row(table: dict, baseline: str | None) -> tuple | None:
    """The one row of the baseline method (None: absent, or several variants of it)."""
    rows = [row for row in table["rows"] if row[0] == baseline]
    return rows[0] if len(rows) == 1 else None


def gain_markdown(dataset: str, table: dict, base: tuple, metric: str) -> list[str]:
    lines = [
        f"**{dataset}**: gain over {row_label(table, base)} in {METRIC_NAMES[metric]} (points), "
        "paired by seed: mean ± std of (method - baseline) over the seeds both have",
        "",
        "| " + " | ".join(["method", *table["keys"], *table["splits"]]) + " |",
        "|---|" + "---|" * (len(table["keys"]) + len(table["splits"])),
    ]
    for row in table["rows"]:
        if row == base:
            continue
        cells = [
            gain_text(paired_gain(table["cells"][(row, s)], table["cells"][(base, s)]))
            for s in table["splits"]
        ]
        lines.append("| " + " | ".join([row[0], *row[1], *cells]) + " |")
    return [*lines, ""]


def per_seed_markdown(
    dataset: str, table: dict, split: str, base: tuple | None, metric: str
) -> list[str]:
    """One split's runs with a column per seed, then the mean ± std and the gain paired by seed."""
    rows = sorted(table["rows"], key=lambda row: row != base)  # the baseline first
    cells = {row: table["cells"][(row, split)] for row in rows}
    seeds = sorted(
        {seed for c in cells.values() for seed in (*c.values, *c.failed, *c.missing)},
        key=_sort_key,
    )
    gain_title = [] if base is None else [f"gain over {row_label(table, base)}, paired by seed"]
    lines = [
        f"**{dataset}**, split {split}: {METRIC_NAMES[metric]} (%) per seed",
        "",
        "| "
        + " | ".join(
            ["method", *table["keys"], *(f"seed {s}" for s in seeds), "mean ± std", *gain_title]
        )
        + " |",
        "|---|" + "---|" * (len(table["keys"]) + len(seeds) + 1 + len(gain_title)),
    ]
    for row, cell in cells.items():
        values = [
            f"{cell.values[s]:.2f}" if s in cell.values else "failed" if s in cell.failed
            else "missing"
            for s in seeds
        ]  # fmt: skip
        gain = []
        if base is not None:
            gain = [""] if row == base else [gain_text(paired_gain(cell, cells[base]))]
        lines.append("| " + " | ".join([row[0], *row[1], *values, cell_text(cell), *gain]) + " |")
    return [*lines, ""]


def to_markdown(
    tables: dict[str, dict],
    metric: str,
    baseline: str | None = "supervised",
    per_seed: bool = False,
) -> str:
    lines = []
    for dataset, table in tables.items():
        seeds = max((c.expected for c in table["cells"].values()), default=0)
        lines += [
            f"**{dataset}**: {METRIC_NAMES[metric]} (%), mean ± std over {seeds} seed(s) "
            "(sample std; one value: no std)",
            "",
            "| " + " | ".join(["method", *table["keys"], *table["splits"]]) + " |",
            "|---|" + "---|" * (len(table["keys"]) + len(table["splits"])),
        ]
        for method, values in table["rows"]:
            row = [cell_text(table["cells"][((method, values), s)]) for s in table["splits"]]
            lines.append("| " + " | ".join([method, *values, *row]) + " |")
        lines.append("")
        base = baseline_row(table, baseline)
        if base is not None and len(table["rows"]) > 1:
            lines += gain_markdown(dataset, table, base, metric)
        if per_seed:
            for split in table["splits"]:
                lines += per_seed_markdown(dataset, table, split, base, metric)
    return "\n".join(lines)


def write_csv(tables: dict[str, dict], path: Path) -> None:
    keys = next(iter(tables.values()))["keys"] if tables else []  # the same for every dataset
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "dataset",
                "method",
                *keys,
                "split",
                "mean",
                "std",
                "runs",
                "expected",
                "values",
                "seeds",
                "failed_seeds",
                "missing_seeds",
            ]
        )
        for dataset, table in tables.items():
            for method, values in table["rows"]:
                for split in table["splits"]:
                    cell = table["cells"][((method, values), split)]
                    writer.writerow(
                        [
                            dataset,
                            method,
                            *values,
                            split,
                            "" if cell.mean is None else round(cell.mean, 4),
                            "" if cell.std is None else round(cell.std, 4),
                            len(cell.values),
                            cell.expected,
                            ";".join(f"{v:.2f}" for v in cell.values.values()),
                            ";".join(cell.values),
                            ";".join(cell.failed),
                            ";".join(cell.missing),
                        ]
                    )


def plot(tables: dict[str, dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4), squeeze=False)
    for ax, (dataset, table) in zip(axes[0], tables.items(), strict=True):
        splits = table["splits"]
        numeric = all(_sort_key(s)[0] == 0 for s in splits)
        xs = [float(s) for s in splits] if numeric else list(range(len(splits)))
        for row in table["rows"]:
            points = [
                (x, table["cells"][(row, s)])
                for x, s in zip(xs, splits, strict=True)
                if table["cells"][(row, s)].values
            ]
            if not points:
                continue
            ax.errorbar(
                [x for x, _ in points],
                [c.mean for _, c in points],
                yerr=[c.std or 0.0 for _, c in points],
                marker="o",
                capsize=3,
                label=row_label(table, row),
            )
        if numeric and len(xs) > 1 and max(xs) / max(min(xs), 1e-9) > 4:
            ax.set_xscale("log")
        ax.set_xticks(xs, splits)
        ax.minorticks_off()
        ax.set_xlabel("labeled images (split)")
        ax.set_ylabel(f"{METRIC_NAMES[metric]} (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    root: Path,
    out: Path | None = None,
    metric: str = "best_val_miou",
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
        default="best_val_miou",
        choices=["best_val_miou", "val_miou"],
        help="best (default, as the papers report) or last validation mIoU",
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
