"""What `semiseg.tools.report` writes: the markdown tables (means, paired gains, per seed), the
CSV and the plot of a sweep's table (built by report.build_table)."""

from __future__ import annotations

import csv
from pathlib import Path

from semiseg.tools import report as R


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def header_rows(first: list[str], count: int) -> list[str]:
    """A markdown header row and its rule (`count` columns after the first)."""
    return [markdown_row(first), "|---|" + "---|" * count]


def cell_text(cell: R.Cell) -> str:
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


def paired_gain(cell: R.Cell, base: R.Cell) -> R.Cell:
    """The cell's gain over the baseline's cell seed by seed, on the seeds both have; a seed
    either lacks is missing from the gain."""
    seeds = list(dict.fromkeys([*cell.values, *cell.failed, *cell.missing]))
    shared = [seed for seed in seeds if seed in cell.values and seed in base.values]
    return R.Cell(
        values={seed: cell.values[seed] - base.values[seed] for seed in shared},
        missing=[seed for seed in seeds if seed not in shared],
    )


def gain_text(gain: R.Cell) -> str:
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
        f"**{dataset}**: gain over {R.row_label(table, base)} in {R.metric_name(metric, table.get('selection'))} (points), "
        "paired by seed: mean ± std of (method - baseline) over the seeds both have",
        "",
        *header_rows(
            ["method", *table["keys"], *table["splits"]], len(table["keys"]) + len(table["splits"])
        ),
    ]
    for row in table["rows"]:
        if row == base:
            continue
        cells = [
            gain_text(paired_gain(table["cells"][(row, s)], table["cells"][(base, s)]))
            for s in table["splits"]
        ]
        lines.append(markdown_row([row[0], *row[1], *cells]))
    return [*lines, ""]


def per_seed_markdown(
    dataset: str, table: dict, split: str, base: tuple | None, metric: str
) -> list[str]:
    """One split's runs with a column per seed, then the mean ± std and the gain paired by seed."""
    rows = sorted(table["rows"], key=lambda row: row != base)  # the baseline first
    cells = {row: table["cells"][(row, split)] for row in rows}
    seeds = sorted(
        {seed for c in cells.values() for seed in (*c.values, *c.failed, *c.missing)},
        key=R._sort_key,
    )
    gain_title = [] if base is None else [f"gain over {R.row_label(table, base)}, paired by seed"]
    lines = [
        f"**{dataset}**, split {split}: {R.metric_name(metric, table.get('selection'))} (%) per seed",
        "",
        *header_rows(
            ["method", *table["keys"], *(f"seed {s}" for s in seeds), "mean ± std", *gain_title],
            len(table["keys"]) + len(seeds) + 1 + len(gain_title),
        ),
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
        lines.append(markdown_row([row[0], *row[1], *values, cell_text(cell), *gain]))
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
            f"**{dataset}**: {R.metric_name(metric, table.get('selection'))} (%), mean ± std over {seeds} seed(s) "
            "(sample std; one value: no std)",
            "",
            *header_rows(
                ["method", *table["keys"], *table["splits"]],
                len(table["keys"]) + len(table["splits"]),
            ),
        ]
        for method, values in table["rows"]:
            row = [cell_text(table["cells"][((method, values), s)]) for s in table["splits"]]
            lines.append(markdown_row([method, *values, *row]))
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
        numeric = all(R._sort_key(s)[0] == 0 for s in splits)
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
                label=R.row_label(table, row),
            )
        if numeric and len(xs) > 1 and max(xs) / max(min(xs), 1e-9) > 4:
            ax.set_xscale("log")
        ax.set_xticks(xs, splits)
        ax.minorticks_off()
        ax.set_xlabel("labeled images (split)")
        ax.set_ylabel(f"{R.metric_name(metric, table.get('selection'))} (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
