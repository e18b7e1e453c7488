"""Tasks: what a validation predicts and scores, and what a run reports.

A task kind (pixels of natural images, 3D volumes, change pairs) owns its validation scores, the
score that selects best.ckpt, its results.json keys, its printed line and its dashboard tables.
Training validation and eval.py run the same task code (methods/base.py calls it inside
Lightning's validation loop; run/evaluate.py runs that loop with Trainer.validate).

`eval.task` names the kind; a new kind is a new module here and one entry in TASKS.
"""

from __future__ import annotations

from semiseg.errors import ConfigError
from semiseg.tasks.base import Task
from semiseg.tasks.change import ChangeTask
from semiseg.tasks.segmentation import SegmentationTask
from semiseg.tasks.volume import VolumeTask

TASKS: dict[str, type[Task]] = {
    "segmentation": SegmentationTask,
    "volume": VolumeTask,
    "change_detection": ChangeTask,
}


def task_class(name: str | None) -> type[Task]:
    """The task kind `name` (eval.task) names; segmentation when unset."""
    name = name or "segmentation"
    if name not in TASKS:
        raise ConfigError(f"eval.task={name!r} is unknown: use one of {', '.join(TASKS)}")
    return TASKS[name]


def build_task(class_names: list[str], evaluation: dict, crop_size: int) -> Task:
    """The task `evaluation["task"]` names (segmentation when unset)."""
    return task_class(evaluation.get("task"))(class_names, evaluation, crop_size)


__all__ = ["TASKS", "Task", "build_task", "task_class"]
