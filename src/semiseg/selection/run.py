"""select_images.py: score the unlabeled images of a checkpoint's split, choose `budget` of them
with `strategy`, and write the next round (selection/outputs.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from semiseg.checkpoints.load import inference_device, load_checkpoint
from semiseg.data.spec import DatasetSpec
from semiseg.errors import ConfigError
from semiseg.predict import tta_probabilities
from semiseg.run.evaluate import eval_dataset_config, eval_settings, module_from_checkpoint
from semiseg.selection import label_studio, outputs
from semiseg.selection.scoring import load_normalized, score_pool, scoring_mode
from semiseg.selection.strategies import STRATEGIES, check_budget, check_strategy, choose

# What each dataset format would need before select_images.py can score it (docs/selection.md).
NOT_YET = {
    "h5": "ACDC trains on 2D slices but labels whole cases: choosing cases (every slice of a "
    "case, scored by the mean of its slices) is not written yet",
    "cd": "change pairs need both images of a pair scored together: not written yet",
}


def run(cfg: DictConfig) -> dict:
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
    fmt = dataset_cfg.get("format") or "images"
    if fmt in NOT_YET:
        raise ConfigError(f"select_images.py on dataset={dataset_cfg.name}: {NOT_YET[fmt]}")
    spec = DatasetSpec.from_config(dataset_cfg)
    spec.check_root()
    split = cfg.split if cfg.split is not None else trained["split"]
    resolved, _ = spec.resolve_split(split)
    files = spec.load_files(resolved.folder)
    pool = files.unlabeled
    if not pool:
        raise ConfigError(f"split {split} in {spec.splits_dir} has no unlabeled images to choose")
    budget = check_budget(cfg.budget, len(pool))
    name = str(cfg.split_name) if cfg.split_name is not None else str(len(files.labeled) + budget)
    outputs.refuse_existing(output / name)  # before the scoring, not after it

    evaluation = eval_settings(cfg, trained, dataset_cfg, state, class_names)
    crop, mode = int(dataset_cfg.crop_size), evaluation["mode"]
    module = module_from_checkpoint(checkpoint, evaluation, crop)
    if strategy == "disagreement" and module.disagreement_views is None:
        raise ConfigError(
            f"strategy=disagreement: method {trained['method']['name']} has one prediction of an "
            "image only (the EMA family compares teacher and student, UniMatch its two "
            "streams): choose entropy, margin, kcenter or random"
        )
    device = inference_device(cfg.device)
    module = module.to(device).eval()
    torch.manual_seed(int(cfg.seed))  # the feature-perturbation dropout of disagreement
    print(
        f"select: {budget} of {len(pool)} unlabeled images of split {split} "
        f"({len(files.labeled)} labeled) by {strategy}, with the {module.eval_network_name} "
        f"of {cfg.ckpt_path}"
    )
    scores = score_pool(
        module,
        [spec.root / s.image for s in pool],
        [spec.root / s.image for s in files.labeled],
        mode,
        crop,
        pair=module.disagreement_views is not None,
        features=strategy == "kcenter",
        device=device,
    )
    chosen = choose(strategy, budget, len(pool), scores.as_dict(), seed=int(cfg.seed))

    new_labeled, new_unlabeled, picked = outputs.next_round(files.labeled, pool, chosen)
    folder = outputs.write_next_split(
        output, name, new_labeled, new_unlabeled, spec.splits_dir / "val.txt"
    )
    score_values = scores.as_dict()
    outputs.write_scores_csv(output / "scores.csv", pool, score_values, chosen)
    ranked_by = STRATEGIES[strategy]
    labels = [
        f"#{k + 1} {Path(s.image).name}"
        + (f" {score_values[ranked_by][i]:.3f}" if ranked_by else "")
        for k, (i, s) in enumerate(zip(chosen, picked, strict=True))
    ]
    shown = outputs.contact_sheet(
        output / "contact_sheet.png", spec.root, picked, [scores.maps[i] for i in chosen], labels
    )
    if cfg.label_studio:
        tasks = [
            label_studio.task(
                f"{cfg.image_url_prefix}{sample.image}",
                predicted_labels(
                    module.eval_network, spec.root / sample.image, mode, crop, len(class_names)
                ),
                class_names,
                str(cfg.ckpt_path),
            )
            for sample in picked
        ]
        label_studio.write(output / "label_studio", tasks, class_names)
    summary = {
        "ckpt_path": str(cfg.ckpt_path),
        "method": trained["method"]["name"],
        "network": module.eval_network_name,
        "disagreement": module.disagreement_views,
        "dataset": dataset_cfg.name,
        "dataset_root": str(spec.root),
        "split": str(split),
        "strategy": strategy,
        "budget": budget,
        "seed": int(cfg.seed),
        "new_split": name,
        "labeled": len(new_labeled),
        "unlabeled": len(new_unlabeled),
        "chosen": [{"image": s.image, "mask": s.mask} for s in picked],
        "masks_to_draw": [s.mask for s in picked if not (spec.root / s.mask).is_file()],
        "contact_sheet": {"file": "contact_sheet.png", "shown": shown},
        "label_studio": "label_studio/tasks.json" if cfg.label_studio else None,
        "train": f"python train.py dataset={dataset_cfg.name} dataset.root={spec.root} "
        f"dataset.splits_dir={output.resolve()} split={name}",
        "wall_time_s": round(time.time() - started, 1),
    }
    outputs.write_atomic(output / "select.json", (json.dumps(summary, indent=2) + "\n").encode())
    missing = summary["masks_to_draw"]
    print(f"chose {budget} images; the next split is {folder} ({len(new_labeled)} labeled)")
    if missing:
        print(f"draw their masks at the paths in {folder / 'labeled.txt'} (e.g. {missing[0]})")
    print(f"then train on it: {summary['train']}")
    return summary


@torch.no_grad()
def predicted_labels(network, path: Path, mode: str, crop: int, num_classes: int):
    """The class per pixel (H, W) of one image, predicted as it was scored."""
    image = load_normalized(path).to(next(network.parameters()).device)
    probs = tta_probabilities(network, image, scoring_mode(mode), crop, num_classes)
    return probs[0].argmax(0).cpu().numpy()
