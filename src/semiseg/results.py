"""results.json: the one file a run leaves for humans, sweeps and reports."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file and rename, so a crash never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_results(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# Lightning's short spellings of trainer.precision and the names the references are stored under.
PRECISION_NAMES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def precision_name(precision) -> str:
    text = str(precision)
    return PRECISION_NAMES.get(text, text)


def versus_reference(results: dict, reference) -> str:
    """One line comparing this run's best val mIoU with a stored reference figure (the config's
    `reference`: `method`, the `split` and `steps` it was measured at, and either `best_val_miou`
    with `source` (where it comes from), or `by_precision`: those two per trainer.precision, of
    which the run's resolved precision picks one); a run of another split or length is told so,
    and a precision without a stored figure is named instead of compared across."""
    name = reference["method"]
    figure = reference
    if reference.get("by_precision") is not None:
        stored = {precision_name(k): v for k, v in reference["by_precision"].items()}
        precision = precision_name(results.get("precision"))
        if precision not in stored:
            return (
                f"no stored {name} figure for {precision} (stored: {', '.join(stored)}): "
                f"{results['method']} {_score(results.get('best_val_miou'))} is not compared "
                "across precisions"
            )
        figure = stored[precision]
    value = float(figure["best_val_miou"])
    best = results.get("best_val_miou")
    if best is None:
        return f"no validation to compare with {name}'s {value:.2f}"
    line = (
        f"{results['method']} {best:.2f} vs {name} {value:.2f} ({best - value:+.2f} mIoU); "
        f"{name}: {figure['source']}"
    )
    setting = (str(reference["split"]), int(reference["steps"]))
    if (str(results["split"]), int(results["steps"])) != setting:
        line += f" (measured at split {setting[0]}, {setting[1]} steps: not this run's setting)"
    return line


def _score(best) -> str:
    return "(no validation)" if best is None else f"{best:.2f}"
