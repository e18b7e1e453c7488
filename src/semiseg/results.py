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


def versus_reference(results: dict, reference) -> str:
    """One line comparing this run's best val mIoU with a stored reference figure (the config's
    `reference`: `method`, `best_val_miou`, the `split` and `steps` it was measured at and
    `source`, where it comes from); a run of another split or length is told so."""
    name, figure = reference["method"], float(reference["best_val_miou"])
    best = results.get("best_val_miou")
    if best is None:
        return f"no validation to compare with {name}'s {figure:.2f}"
    line = (
        f"{results['method']} {best:.2f} vs {name} {figure:.2f} ({best - figure:+.2f} mIoU); "
        f"{name}: {reference['source']}"
    )
    setting = (str(reference["split"]), int(reference["steps"]))
    if (str(results["split"]), int(results["steps"])) != setting:
        line += f" (measured at split {setting[0]}, {setting[1]} steps: not this run's setting)"
    return line
