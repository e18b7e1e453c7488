"""results.json: the one file a run leaves for humans, sweeps and reports.

Every training run's file has the same first keys (method, dataset, split, seed, steps), then its
task's keys (tasks/): `selection` names the score that selected best.ckpt, `best_val_score` is
that score of best.ckpt and `best_step` its step; `best_val_miou` is best.ckpt's mIoU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from semiseg.checkpoints.io import BEST, LAST
from semiseg.hardware import precision_name

# The results.json values train.py can return to a sweeper (`optimized_metric`).
OPTIMIZABLE = ("best_val_score", "best_val_miou", "val_miou", "wall_time_s")


def train_results(cfg, trainer, module, trainer_args: dict, init: dict, resumed_from) -> dict:
    """The results.json of a training run (wall_time_s is added by the caller)."""
    results = {
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "source": cfg.source.name if cfg.get("source") else None,  # domain adaptation
        "split": cfg.split,
        "seed": int(cfg.seed),
        "steps": int(trainer.global_step),
        "task": module.task.name,
        **module.task.train_results(module.val_history, module.last_state),
        "eval_mode": cfg.eval.mode,
        "eval_network": module.eval_network_name,
        "val_history": module.val_history,
        "world_size": trainer.world_size,
        "precision": str(trainer_args.get("precision")),
        "init": init,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "checkpoints": {"last": f"checkpoints/{LAST}", "best": f"checkpoints/{BEST}"},
    }
    return results


def done_line(results: dict, task) -> str:
    """The line a finished training run prints."""
    score = f"val mIoU {results['val_miou']} (best.ckpt {results['best_val_miou']})"
    if task.selection != "miou":
        last = results["val_history"][-1].get(task.selection) if results["val_history"] else None
        score = (
            f"val {task.selection_label} {last} (best.ckpt {results['best_val_score']}), "
            f"mIoU {results['val_miou']}"
        )
    return (
        f"done: {results['method']} on {results['dataset']} split {results['split']}: "
        f"{score} after {results['steps']} steps in {results['wall_time_s']} s"
    )


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
