"""eval.py: score a checkpoint with the validation code that ran in training.

The method's LightningModule is rebuilt from the checkpoint's config and weights, and
`Trainer.validate` runs its validation (methods/base.py, the task's predict and scores): the same
function, inference mode and confusion matrix as training. A released file of the public code
(checkpoints/released.py) is scored the same way, its networks held by methods/released.py, with
the model and dataset the command line gives. The task (tasks/) then writes its
results.json keys, the confusion matrix and, with save_predictions=true, every prediction.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path, PurePosixPath

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from semiseg.checkpoints.load import check_weights, load_checkpoint
from semiseg.data import palettes
from semiseg.data.datamodule import ValidationData, build_val_dataset
from semiseg.errors import ConfigError
from semiseg.run.build import miou_subsets
from semiseg.run.results import write_json_atomic


def evaluate(cfg: DictConfig) -> dict:
    started = time.time()
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(cfg.ckpt_path, released_choices(cfg))
    state = checkpoint["semiseg"]
    trained, class_names = state["config"], state["class_names"]
    dataset_cfg = eval_dataset_config(cfg, trained)
    evaluation = eval_settings(cfg, trained, dataset_cfg, state, class_names)
    module = module_from_checkpoint(checkpoint, evaluation, int(dataset_cfg.crop_size))
    module.scoring_only = True  # scores only: no history, logging or training line
    val_set = build_val_dataset(dataset_cfg, num_classes=len(class_names))

    callbacks = []
    if cfg.save_predictions:
        palette = palettes.resolve(dataset_cfg.get("palette"), len(class_names))
        callbacks.append(PredictionWriter(out / "predictions", val_set, palette))
    trainer = L.Trainer(
        accelerator=accelerator(cfg.device),
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        inference_mode=True,
    )
    trainer.validate(module, datamodule=ValidationData(val_set), verbose=False)

    task, scores = module.task, module.last_scores
    results = {
        "ckpt_path": str(cfg.ckpt_path),
        "method": trained["method"]["name"],
        "dataset": dataset_cfg.name,
        "split": trained.get("split"),
        "seed": trained.get("seed"),
        "steps": int(checkpoint.get("global_step", 0)),
        "task": task.name,
        "eval_mode": evaluation["mode"],
        "eval_network": module.eval_network_name,
        **task.eval_results(scores, out),
        f"num_{task.items}": len(val_set),
    }
    results["wall_time_s"] = round(time.time() - started, 1)
    for line in task.eval_lines(results):
        print(line)
    write_json_atomic(out / "results.json", results)
    print(f"results in {out}")
    return results


def eval_settings(cfg, trained: dict, dataset_cfg, state: dict, class_names) -> dict:
    """The run's `eval` settings with eval.py's own on top: the mode and task of the evaluated
    dataset, the chosen network only (no other networks), the dataset's mIoU subsets."""
    evaluation = dict(trained.get("eval", {}))
    evaluation.update({k: v for k, v in OmegaConf.to_container(cfg.eval).items() if v is not None})
    evaluation["mode"] = cfg.eval.mode or dataset_cfg.eval_mode
    evaluation["task"] = dataset_cfg.get("task") or "segmentation"
    evaluation["model"] = cfg.eval.get("model") or state.get("eval_network", "student")
    evaluation["other_networks"] = False
    evaluation["miou_subsets"] = miou_subsets(trained.get("source"), dataset_cfg, class_names)
    if cfg.get("trust", False):  # pseudo-label precision, coverage and calibration
        tau = cfg.get("trust_tau")
        evaluation["trust_tau"] = float(
            tau if tau is not None else trained["method"].get("tau", 0.95)
        )
        evaluation["trust_target_precision"] = cfg.get("trust_target_precision")
    return evaluation


def module_from_checkpoint(checkpoint: dict, evaluation: dict, crop_size: int):
    """The training run's LightningModule, with every network's weights of the checkpoint."""
    state = checkpoint["semiseg"]
    trained = state["config"]
    networks = state.get("networks", {"student": "model"})
    if evaluation["model"] not in networks:
        raise ConfigError(
            f"eval.model={evaluation['model']}: this checkpoint holds {', '.join(networks)} "
            f"(method {trained['method']['name']})"
        )
    model_cfg = dict(trained["model"], pretrained="scratch")  # the checkpoint holds the weights
    model = instantiate(model_cfg, num_classes=len(state["class_names"]))
    module = instantiate(
        trained["method"],
        model=model,
        class_names=state["class_names"],
        optim=trained["optim"],
        evaluation=evaluation,
        crop_size=crop_size,
    )
    check_weights(module, checkpoint["state_dict"], checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    return module


def released_choices(cfg: DictConfig) -> dict:
    """What a released file (checkpoints/released.py) is read as: the command line's model, and
    its dataset only if the command line chose one (eval.yaml's default toy is no choice)."""
    return {"model": cfg.get("model"), "dataset": cfg.dataset if _chose("dataset") else None}


def _chose(group: str) -> bool:
    overrides = HydraConfig.get().overrides.task
    return any(o.split("=", 1)[0].lstrip("+~") == group for o in overrides)


def eval_dataset_config(cfg: DictConfig, trained: dict) -> DictConfig:
    """The checkpoint's dataset unless the command line chose one, plus `dataset.*` overrides."""
    overrides = list(HydraConfig.get().overrides.task)
    chose_dataset = _chose("dataset")
    dataset = cfg.dataset if chose_dataset else OmegaConf.create(trained["dataset"])
    if not chose_dataset:
        # `dataset.root=X` sets `root` of the checkpoint's dataset (and keeps its other keys)
        keys = [o.lstrip("+") for o in overrides if o.lstrip("+~").startswith("dataset.")]
        keys = [k.removeprefix("dataset.") for k in keys]
        moved = OmegaConf.from_dotlist(keys)
        # the checkpoint holds resolved paths: a splits_dir below the old root moves with it
        old_root, old_splits = str(dataset.get("root", "")), str(dataset.get("splits_dir", ""))
        if "root" in moved and "splits_dir" not in moved and old_root:
            if Path(old_splits).is_relative_to(old_root):
                moved.splits_dir = str(Path(moved.root) / Path(old_splits).relative_to(old_root))
        dataset = OmegaConf.merge(dataset, moved)
    return dataset


def accelerator(choice: str) -> str:
    """`device: auto` is the GPU when there is one, else the CPU."""
    if choice == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return {"cuda": "gpu"}.get(str(choice).split(":")[0], str(choice))


class PredictionWriter(Callback):
    """save_predictions=true: each validation item's prediction under predictions/, named by
    `prediction_names` (the task chooses the format: index PNG, or HDF5 for volumes)."""

    def __init__(self, folder: Path, val_set, palette):
        self.folder = Path(folder)
        self.names = prediction_names([s.image for s in val_set.samples])
        self.palette = palette

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        if trainer.world_size > 1:
            raise ConfigError("save_predictions=true runs on one process: drop torchrun")
        path = self.folder / self.names[batch_idx]
        pl_module.task.write_prediction(path.with_suffix(""), outputs, self.palette)


def prediction_names(images: list[str]) -> list[Path]:
    """Where each image's prediction goes under predictions/: its path below the folder that
    all listed images share, as .png (Cityscapes: frankfurt/<name>.png; one folder: <name>.png),
    so images with the same name in different folders keep apart. Images that differ only in
    their extension keep it (x.jpg.png)."""
    paths = [PurePosixPath(os.path.normpath(image).replace(os.sep, "/")) for image in images]
    try:
        common = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
    except ValueError:  # absolute and relative paths mixed
        common = ""
    relative = [p.relative_to(common) if common not in ("", ".") else p for p in paths]
    # never outside predictions/: no root, no '..'
    relative = [
        PurePosixPath(*[part if part != ".." else "_" for part in p.parts if part != "/"])
        for p in relative
    ]
    names = [p.with_suffix(".png") for p in relative]
    taken = Counter(names)
    return [
        Path(name if taken[name] == 1 else p.with_name(p.name + ".png"))
        for name, p in zip(names, relative, strict=True)
    ]
