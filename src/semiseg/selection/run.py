"""select_images.py: score the unlabeled images of a checkpoint's split (images, ACDC slices or
cases, change pairs: selection/pool.py), choose `budget` of them with `strategy`, and write the
next round (selection/outputs.py). Under torchrun each process scores every world-th pool entry
and rank 0 gathers the scores, chooses and writes once: the same files as one process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from semiseg.checkpoints.load import inference_device, load_checkpoint
from semiseg.data import change, medical
from semiseg.data.spec import DatasetSpec
from semiseg.distributed import launched_by_torchrun
from semiseg.errors import ConfigError
from semiseg.run.evaluate import eval_dataset_config, eval_settings, module_from_checkpoint
from semiseg.selection import label_studio, outputs
from semiseg.selection.pool import FORMATS, check_unit, group, unit_groups
from semiseg.selection.scoring import merge, score_pool
from semiseg.selection.strategies import STRATEGIES, check_budget, check_strategy, choose

COLUMN = {"image": "image", "pair": "pair", "slice": "slice", "case": "case"}  # scores.csv, by unit


def run(cfg: DictConfig) -> dict | None:
    """Choose and write the next round; under torchrun every process scores its share of the
    pool and rank 0 alone chooses and writes (the others return None)."""
    started = time.time()
    strategy = check_strategy(cfg.strategy)
    for key in ("output", "budget"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            raise ConfigError(f"{key} is required: give {key}=...")
    output = Path(str(cfg.output)).expanduser()
    checkpoint = load_checkpoint(cfg.ckpt_path)
    state = checkpoint["semiseg"]
    trained, class_names = state["config"], state["class_names"]
    dataset_cfg = eval_dataset_config(cfg, trained)
    fmt_name = dataset_cfg.get("format") or "images"
    if fmt_name not in FORMATS:
        raise ConfigError(f"dataset.format={fmt_name} is unknown: use one of {', '.join(FORMATS)}")
    unit = check_unit(cfg.get("unit"), fmt_name)
    spec = DatasetSpec.from_config(dataset_cfg)
    spec.check_root()
    split = cfg.split if cfg.split is not None else trained["split"]
    resolved, _ = spec.resolve_split(split)

    evaluation = eval_settings(cfg, trained, dataset_cfg, state, class_names)
    crop, mode = int(dataset_cfg.crop_size), evaluation["mode"]
    fmt = FORMATS[fmt_name](spec.root, mode, crop, len(class_names))
    labeled, samples, val_file = split_lists(spec, fmt, dataset_cfg, resolved.folder)
    if not samples:
        raise ConfigError(f"split {split} in {spec.splits_dir} has no unlabeled images to choose")
    pool, labeled_pool = group(samples, unit), group(labeled, unit)
    what = {"case": "cases", "slice": "slices", "pair": "pairs"}.get(unit, "images")
    budget = check_budget(cfg.budget, len(pool), f"unlabeled {what}")
    name = str(cfg.split_name) if cfg.split_name is not None else str(len(labeled_pool) + budget)
    outputs.refuse_existing(output / name)  # before the scoring, not after it

    module = module_from_checkpoint(checkpoint, evaluation, crop)
    if strategy == "disagreement" and module.disagreement_views is None:
        raise ConfigError(
            f"strategy=disagreement: method {trained['method']['name']} has one prediction of an "
            "image only (the EMA family compares teacher and student, UniMatch its two "
            "streams): choose entropy, margin, kcenter or random"
        )
    rank, world, device = join_processes(cfg.device)
    module = module.to(device).eval()
    if rank == 0:
        print(
            f"select: {budget} of {len(pool)} unlabeled {what} of split {split} "
            f"({len(labeled_pool)} labeled) by {strategy}, with the "
            f"{module.eval_network_name} of {cfg.ckpt_path}"
            + (f", on {world} processes" if world > 1 else "")
        )
    pair, features = module.disagreement_views is not None, strategy == "kcenter"
    part = score_pool(
        module, fmt, samples, labeled, pair, features, device, int(cfg.seed), rank, world
    )
    parts = gather(part, world)
    if rank != 0:
        return None
    scores = merge(parts, len(samples), len(labeled), pair, features)
    values = unit_values(scores, pool, labeled_pool)
    chosen = choose(strategy, budget, len(pool), values, seed=int(cfg.seed))

    members = [i for u in chosen for i in pool.members[int(u)]]
    masks_listed = fmt_name == "images"
    new_labeled, new_unlabeled, picked = outputs.next_round(labeled, samples, members, masks_listed)
    folder = outputs.write_next_split(
        output, name, new_labeled, new_unlabeled, val_file, masks_listed
    )
    column = COLUMN[unit]
    outputs.write_scores_csv(output / "scores.csv", pool.names, values, chosen, column)
    ranked_by = STRATEGIES[strategy]
    shown_units = [int(u) for u in chosen[: outputs.SHEET_MAX]]
    # a case is shown by its most uncertain slice
    faces = [max(pool.members[u], key=lambda i: scores.entropy[i]) for u in shown_units]
    labels = [
        f"#{k + 1} {Path(pool.names[u]).name}"
        + (f" {values[ranked_by][u]:.3f}" if ranked_by else "")
        for k, u in enumerate(shown_units)
    ]
    shown = outputs.contact_sheet(
        output / "contact_sheet.png",
        [fmt.thumbnails(samples[i]) for i in faces],
        [scores.maps[i] for i in faces],
        labels,
    )
    if cfg.label_studio:  # the chosen samples with the model's prediction as pre-annotations
        label_studio.export(
            output / "label_studio",
            fmt,
            module.eval_network,
            picked,
            class_names,
            str(cfg.ckpt_path),
            str(cfg.image_url_prefix),
            device,
        )
    summary = {
        "ckpt_path": str(cfg.ckpt_path),
        "method": trained["method"]["name"],
        "network": module.eval_network_name,
        "disagreement": module.disagreement_views,
        "dataset": dataset_cfg.name,
        "dataset_root": str(spec.root),
        "split": str(split),
        "unit": unit,
        "strategy": strategy,
        "budget": budget,
        "seed": int(cfg.seed),
        "processes": world,
        "new_split": name,
        "labeled": len(new_labeled),
        "unlabeled": len(new_unlabeled),
        "chosen_units": [pool.names[int(u)] for u in chosen],
        "chosen": [{"image": s.image, "mask": s.mask} for s in picked],
        "masks_to_draw": masks_to_draw(fmt_name, spec.root, picked),
        "contact_sheet": {"file": "contact_sheet.png", "shown": shown},
        "label_studio": "label_studio/tasks.json" if cfg.label_studio else None,
        "train": f"python train.py dataset={dataset_cfg.name} dataset.root={spec.root} "
        f"dataset.splits_dir={output.resolve()} split={name}",
        "wall_time_s": round(time.time() - started, 1),
    }
    outputs.write_atomic(output / "select.json", (json.dumps(summary, indent=2) + "\n").encode())
    missing = summary["masks_to_draw"]
    print(f"chose {budget} {what}; the next split is {folder} ({len(new_labeled)} labeled)")
    if missing:
        print(f"draw their masks at the paths in {folder / 'labeled.txt'} (e.g. {missing[0]})")
    print(f"then train on it: {summary['train']}")
    return summary


def split_lists(spec: DatasetSpec, fmt, dataset_cfg, folder: Path):
    """(labeled samples, pool samples, the validation list file) of a split folder, every file
    checked; image datasets read as train.py reads them, slices and pairs one name per line."""
    if fmt.name == "images":
        files = spec.load_files(folder)
        return files.labeled, files.unlabeled, spec.splits_dir / "val.txt"
    labeled = fmt.read_list(folder / "labeled.txt")
    unlabeled_file = folder / "unlabeled.txt"
    pool = fmt.read_list(unlabeled_file) if unlabeled_file.is_file() else []
    for what, listed in (("labeled", labeled), ("unlabeled", pool)):
        if fmt.name == "h5":
            medical.check_exist(spec.root, listed, what)
        else:
            change.check_pairs(spec.root, listed, what, labels=what == "labeled")
    return labeled, pool, spec.splits_dir / (dataset_cfg.get("val_list") or "val.txt")


def unit_values(scores, pool, labeled_pool) -> dict:
    """The strategies' inputs per unit: each score the mean over the unit's samples (a case's
    slices; one sample otherwise), features likewise."""
    values = {
        k: unit_groups(v, pool.members)
        for k, v in scores.as_dict().items()
        if k != "labeled_features"
    }
    if scores.labeled_features is not None:
        values["labeled_features"] = (
            unit_groups(scores.labeled_features, labeled_pool.members)
            if len(labeled_pool)
            else scores.features[:0]
        )
    return values


def masks_to_draw(fmt_name: str, root: Path, picked) -> list[str]:
    """The chosen samples' masks that are not on disk (an HDF5 slice holds its own label)."""
    if fmt_name == "images":
        return [s.mask for s in picked if not (root / s.mask).is_file()]
    if fmt_name == "cd":
        return [f"label/{s.image}" for s in picked if not (root / "label" / s.image).is_file()]
    return []


def join_processes(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): under torchrun the process group (gloo on CPUs, NCCL on
    GPUs, one GPU per local rank); alone (0, 1, the chosen device)."""
    device = inference_device(device_choice)
    if not launched_by_torchrun():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def gather(part: dict, world: int) -> list[dict]:
    """Every process's share, on every process (one process: its own)."""
    if world == 1:
        return [part]
    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    return parts
