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
    `reference`: `method`, `best_val_miou` and `source`, where the figure comes from)."""
    best = results.get("best_val_miou")
    if best is None:
        return f"no validation to compare with {reference['method']}'s {reference['best_val_miou']}"
    gain = best - float(reference["best_val_miou"])
    return (
        f"{results['method']} {best:.2f} vs {reference['method']} {reference['best_val_miou']:.2f}"
        f" ({gain:+.2f} mIoU); {reference['method']}: {reference['source']}"
    )
