"""The papers' recipes as this project resolves them, beside the public code's own values.

    python -m semiseg.tools.recipes      prints the recipe table of docs/recipes.md

Each `experiment=*` config is composed for each official split, exactly as train.py would compose
it, and its backbone, initialisation, crop, batch, learning rate, epochs and optimizer steps are
read from the result. `REFERENCE` holds what the public UniMatch code runs (its configs, scripts,
README and training logs). tests/test_recipes.py checks that the two agree and that docs/recipes.md
shows this table, so neither can drift.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from semiseg.data.splits import Split
from semiseg.models.encoders import imagenet_file
from semiseg.paths import config_dir

# The table's markers in docs/recipes.md (the first names the command that prints it).
TABLE_BEGIN = "<!-- recipe-table:begin (python -m semiseg.tools.recipes) -->"
TABLE_END = "<!-- recipe-table:end -->"

PASCAL_CLASSIC = ["92", "183", "366", "732", "1464"]
PASCAL_BLENDED = ["1/16", "1/8", "1/4", "u2pl_1_16", "u2pl_1_8", "u2pl_1_4"]
CITYSCAPES = ["1/30", "1/16", "1/8", "1/4", "1/2"]
COCO = ["1/512", "1/256", "1/128", "1/64", "1/32"]
PASCAL_U2PL = ["u2pl_1_16", "u2pl_1_8", "u2pl_1_4"]
CITYSCAPES_HALVES = ["1/16", "1/8", "1/4", "1/2"]

# experiment -> the official splits shown for it
EXPERIMENTS = {
    "unimatch_pascal": PASCAL_CLASSIC,
    "fixmatch_pascal": PASCAL_CLASSIC,
    "supervised_pascal": PASCAL_CLASSIC,
    "unimatch_pascal_blended": PASCAL_BLENDED,
    "fixmatch_pascal_blended": PASCAL_BLENDED,
    "supervised_pascal_blended": PASCAL_BLENDED,
    "unimatch_cityscapes": CITYSCAPES,
    "fixmatch_cityscapes": CITYSCAPES,
    "supervised_cityscapes": CITYSCAPES,
    "unimatch_coco": COCO,
    "fixmatch_coco": COCO,
    "supervised_coco": COCO,
    "augseg_pascal": PASCAL_CLASSIC,
    "augseg_pascal_blended": PASCAL_U2PL,
    "augseg_cityscapes": CITYSCAPES_HALVES,
    "imas_pascal": PASCAL_CLASSIC,
    "imas_pascal_blended": PASCAL_U2PL,
    "imas_cityscapes": CITYSCAPES_HALVES,
    "fst_pascal": ["u2pl_1_16"],  # the splits of FST's published semi-supervised configs
    "fst_cityscapes": ["1/4"],  # its mt_fst config in cityscapes/372/ reads the 744 lists
    "css_pascal": PASCAL_CLASSIC,
    "css_cityscapes": CITYSCAPES,
}
# UniMatch V2 (DINOv2 + DPT, AdamW): the splits of its README's results
UNIMATCH_V2_EXPERIMENTS = {
    "unimatch_v2_pascal": PASCAL_CLASSIC,
    "unimatch_v2_cityscapes": CITYSCAPES_HALVES,
    "unimatch_v2_ade20k": ["1/64", "1/32", "1/16", "1/8"],
    "unimatch_v2_coco": COCO,
}
EXPERIMENTS.update(UNIMATCH_V2_EXPERIMENTS)

# Experiments outside the table (its columns assume the papers' 4-GPU runs): the medical and
# remote-sensing ones follow a 1-GPU public recipe (configs/acdc.yaml, whu.yaml, levir.yaml,
# checked in tests/data/test_medical.py, tests/test_change_detection_configs.py and, for
# UniMatch V2's remote-sensing/configs, tests/methods/test_unimatch_v2_change.py) and the toy
# ones are no paper's; unimatch_pascal_slurm is unimatch_pascal on a SLURM launcher.
OUTSIDE_TABLE = [
    "unimatch_acdc",
    "fixmatch_acdc",
    "supervised_acdc",
    "unimatch_acdc_toy",
    "fixmatch_acdc_toy",
    "supervised_acdc_toy",
    "unimatch_whu_cd",
    "supervised_whu_cd",
    "unimatch_levir_cd",
    "supervised_levir_cd",
    "unimatch_v2_whu_cd",
    "unimatch_v2_levir_cd",
    "unimatch_cd_toy",
    "fixmatch_cd_toy",
    "supervised_cd_toy",
    "unimatch_pascal_slurm",
    "first_run",  # the toy demo of `make train`, not a paper recipe
    "dpt_toy",  # DINOv2 + DPT from scratch on the toy, for any method
    # FST's domain adaptation: the mmseg configs of its UDA code (1 GPU, AdamW, iterations),
    # checked in tests/test_fst_uda_recipes.py; the toy one is no paper's
    "fst_gta_cityscapes",
    "fst_synthia_cityscapes",
    "fst_gta_cityscapes_deeplabv2",
    "fst_uda_toy",
]


@dataclass(frozen=True)
class Reference:
    """One public run: `configs/<dataset>.yaml` on `gpus` GPUs (`scripts/train.sh`)."""

    backbone: str
    weights: str  # the file under pretrained/ its model code loads
    crop: int
    batch: int  # per GPU
    gpus: int
    lr: float
    epochs: int | None  # None: a fixed iteration count instead (`iterations`)
    over_labeled: bool = False  # supervised.py: an epoch is one pass over the labeled list
    weight_decay: float = 1e-4
    hyper: tuple = ()  # (config key, public value) pairs the test checks too
    # Images the public loader draws an epoch when that is not the split's unlabeled list
    # (FST's Cityscapes config: 2975 - n_sup with n_sup 744).
    epoch_images: int | None = None
    iterations: int | None = None  # the public total_iter of an iteration-based recipe (CSS)

    def steps(self, n_labeled: int, n_unlabeled: int) -> int:
        if self.iterations:
            return self.iterations
        # DistributedSampler gives each GPU ceil(n / gpus) images; the loader drops the last
        # incomplete batch; the poly schedule runs over epochs * len(loader) iterations.
        n = n_labeled if self.over_labeled else n_unlabeled
        n = self.epoch_images or n
        return self.epochs * (math.ceil(n / self.gpus) // self.batch)


# The public iMAS, AugSeg and FST runs (U2PL code base): their configs and training logs; iMAS's
# Pascal values are the paper's (its repository publishes Cityscapes configs only).
TEACHER_STUDENT = {
    ("augseg", "pascal"): Reference(
        "resnet101", "resnet101.pth", 513, 8, 2, 0.001, 80,
        hyper=(("method.tau", 0.95), ("method.weight_u", 1.0), ("method.ema_alpha", 0.999)),
    ),
    ("augseg", "cityscapes"): Reference(
        "resnet101", "resnet101.pth", 800, 4, 4, 0.01, 240, weight_decay=5e-4,
        hyper=(("method.tau", 0.0), ("method.weight_u", 1.0), ("method.ema_alpha", 0.996),
               ("dataset.labeled_loss.min_kept", 100000)),
    ),
    ("imas", "pascal"): Reference(
        "resnet101", "resnet101.pth", 513, 4, 4, 0.001, 80,
        hyper=(("method.tau", 0.95), ("method.weight_u", 3.0), ("method.ema_alpha", 0.996)),
    ),
    ("imas", "cityscapes"): Reference(
        "resnet50", "resnet50.pth", 769, 4, 4, 0.01, 240, weight_decay=5e-4,
        hyper=(("method.tau", 0.7), ("method.weight_u", 3.0), ("method.ema_alpha", 0.996),
               ("dataset.labeled_loss.min_kept", 100000)),
    ),
    # FST's semi_seg/experiments/{pascal/662/cutmix_fst, cityscapes/372/mt_fst}/config.yaml;
    # train_semi.py multiplies the head's lr by 10 on both.
    ("fst", "pascal"): Reference(
        "resnet101", "resnet101.pth", 513, 4, 4, 0.001, 40,
        hyper=(("method.k", 3), ("method.entropy_drop", 0.2), ("method.weight_u", 1.0),
               ("method.ema_alpha", 0.99), ("optim.lr_multi", 10.0), ("model.output_stride", 8)),
    ),
    ("fst", "cityscapes"): Reference(
        "resnet101", "resnet101.pth", 769, 2, 8, 0.01, 80, weight_decay=5e-4,
        hyper=(("method.k", 3), ("method.entropy_drop", 0.0), ("method.weight_u", 1.0),
               ("method.ema_alpha", 0.99), ("optim.lr_multi", 10.0), ("model.output_stride", 8),
               ("dataset.labeled_loss.min_kept", 100000)),
        epoch_images=2975 - 744,
    ),
}  # fmt: skip

# The public CSS runs: config/{VOC,CityScapes}_config_baseline.yaml and cross_label.py's defaults
# (4 GPUs, strong threshold 0.8, un_threshold 0.97); 80,000 iterations from ori_pseudo.py.
_CSS_HYPER = (
    ("method.tau", 0.97),
    ("method.ema_alpha", 0.99),
    ("method.weak_threshold", 0.7),
    ("method.strong_threshold", 0.8),
    ("method.contrast_temperature", 0.5),
    ("method.num_queries", 256),
    ("method.num_negatives", 512),
    ("method.prototype_alpha", 0.99),
    ("method.rampdown_epochs", 200),
    ("optim.lr_multi", 1.0),
    ("model.output_stride", 8),
)
CSS = {
    "pascal": Reference(
        "resnet101", "resnet101.pth", 512, 8, 4, 0.0064, None, weight_decay=5e-4,
        hyper=_CSS_HYPER, iterations=80_000,
    ),
    "cityscapes": Reference(
        "resnet101", "resnet101.pth", 769, 4, 4, 0.0064, None, weight_decay=5e-4,
        hyper=(*_CSS_HYPER, ("dataset.labeled_loss.min_kept", 200_000)), iterations=80_000,
    ),
}  # fmt: skip


# The public UniMatch V2 runs: configs/<dataset>.yaml on 4 GPUs (scripts/train.sh), whose
# backbone is dinov2_small (the README's results are dinov2_base); AdamW betas (0.9, 0.999).
_V2_HYPER = (("method.tau", 0.95), ("method.ema_alpha", 0.996), ("optim.lr_multi", 40.0))
UNIMATCH_V2 = {
    "pascal": Reference("dinov2_small", "dinov2_small.pth", 518, 4, 4, 5e-6, 60,
                        weight_decay=0.01, hyper=_V2_HYPER),
    "cityscapes": Reference("dinov2_small", "dinov2_small.pth", 798, 2, 4, 5e-6, 180,
                            weight_decay=0.01,
                            hyper=(*_V2_HYPER, ("dataset.labeled_loss.thresh", 0.7),
                                   ("dataset.labeled_loss.min_kept", 200_000))),
    "ade20k": Reference("dinov2_small", "dinov2_small.pth", 518, 2, 4, 5e-6, 60,
                        weight_decay=0.01, hyper=_V2_HYPER),
    "coco": Reference("dinov2_small", "dinov2_small.pth", 518, 4, 4, 5e-6, 20,
                      weight_decay=0.01, hyper=_V2_HYPER),
}  # fmt: skip


def _reference(experiment: str, split: str) -> Reference:
    if experiment.startswith("unimatch_v2_"):
        return UNIMATCH_V2[experiment.removeprefix("unimatch_v2_")]
    method, dataset = experiment.split("_", 1)
    dataset = dataset.removesuffix("_blended")
    tabled = {**TEACHER_STUDENT, **{("css", name): ref for name, ref in CSS.items()}}
    if (method, dataset) in tabled:  # the public configs of these methods, one by one
        return tabled[(method, dataset)]
    supervised = method == "supervised"
    # The public README: the supervised baseline doubles the batch (no lr change).
    batch = 4 if supervised else 2
    tau = () if supervised else (("method.tau", 0.0 if dataset == "cityscapes" else 0.95),)
    if dataset == "pascal":
        if split.startswith("u2pl_"):  # U2PL's splits: logs show crop 513 on 2 GPUs x 4 images
            return Reference(
                "resnet101", "resnet101.pth", 513, 2 * batch, 2, 0.001, 80, supervised, hyper=tau
            )
        return Reference(
            "resnet101", "resnet101.pth", 321, batch, 4, 0.001, 80, supervised, hyper=tau
        )
    if dataset == "cityscapes":
        return Reference(
            "resnet101", "resnet101.pth", 801, batch, 4, 0.005, 240, supervised, hyper=tau
        )
    if dataset == "coco":
        return Reference(
            "xception", "xception.pth", 513, batch, 4, 0.004, 30, supervised, hyper=tau
        )
    raise KeyError(experiment)


@dataclass(frozen=True)
class Row:
    experiment: str
    split: str
    backbone: str
    weights: str
    crop: int
    batch: int
    lr_1: float
    lr_4: float
    epochs: int | None  # None: the recipe fixes trainer.max_steps, on any number of devices
    steps_1: int
    steps_4: int
    reference: Reference
    reference_steps: int
    checks: tuple = ()  # (key, ours, public) for the reference's weight decay and `hyper` keys


def _steps(epochs: int, n: int, devices: int, batch: int) -> int:
    return epochs * (math.ceil(n / devices) // batch)


def compose_experiment(experiment: str):
    """The config train.py composes for `experiment=<experiment>`."""
    import semiseg.data  # noqa: F401  (registers the dataset configs' resolvers)

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}"])


def resolve(experiment: str, split: str, cfg=None) -> Row:
    """The row of one experiment and split, from the config train.py would compose (the same
    as composing with `split=<split>`: every split-dependent value is an interpolation)."""
    cfg = (cfg or compose_experiment(experiment)).copy()
    cfg.split = split
    dataset, model = cfg.dataset, cfg.model
    n_labeled = Split.parse(split.removeprefix("u2pl_"), dataset.split_aliases).count
    n_unlabeled = int(dataset.train_images) - n_labeled
    semi = get_class(cfg.method._target_).uses_unlabeled
    # The data module's epoch: see semiseg.data.datamodule (labeled repeated to the unlabeled
    # length for semi-supervised methods; the labeled list alone for the supervised baseline).
    if semi or cfg.data.epoch_length == "unlabeled":
        n = max(n_labeled, n_unlabeled)
    else:
        n = n_labeled
    batch = int(cfg.data.batch_size)
    max_steps = int(cfg.trainer.max_steps or -1)
    epochs = None if max_steps > 0 else int(cfg.trainer.max_epochs)

    def lr(devices: int) -> float:
        if not cfg.optim.scale_lr:
            return float(cfg.optim.lr)
        return float(cfg.optim.lr) * batch * devices / float(cfg.optim.reference_batch)

    weights = {"imagenet": imagenet_file(model.encoder), "scratch": "none (scratch)"}.get(
        str(model.pretrained), str(model.pretrained)
    )
    reference = _reference(experiment, split)
    checks = tuple(
        (key, OmegaConf.select(cfg, key), value)
        for key, value in (("optim.weight_decay", reference.weight_decay), *reference.hyper)
    )
    return Row(
        experiment=experiment,
        split=split,
        backbone=str(model.encoder),
        weights=weights,
        crop=int(dataset.crop_size),
        batch=batch,
        lr_1=lr(1),
        lr_4=lr(4),
        epochs=epochs,
        steps_1=max_steps if epochs is None else _steps(epochs, n, 1, batch),
        steps_4=max_steps if epochs is None else _steps(epochs, n, 4, batch),
        reference=reference,
        reference_steps=reference.steps(n_labeled, n_unlabeled),
        checks=checks,
    )


def rows() -> list[Row]:
    result = []
    for experiment, splits in EXPERIMENTS.items():
        cfg = compose_experiment(experiment)
        result += [resolve(experiment, split, cfg) for split in splits]
    return result


def markdown_table(all_rows: list[Row] | None = None) -> str:
    """One line per split and group of experiments that resolve alike (UniMatch and FixMatch
    share their recipes)."""
    header = (
        "| experiment | split | backbone (init file) | crop | batch / device | lr on 1 / 4 devices "
        "| epochs | steps on 1 / 4 devices | public code: backbone, crop, batch x GPUs, lr, "
        "epochs, steps |\n|---|---|---|---|---|---|---|---|---|"
    )
    grouped: dict[tuple, list[str]] = {}
    for row in all_rows or rows():
        ref = row.reference
        cells = (
            row.split,
            f"{row.backbone} ({row.weights})",
            str(row.crop),
            str(row.batch),
            f"{row.lr_1:g} / {row.lr_4:g}",
            str(row.epochs or "-"),
            f"{row.steps_1:,} / {row.steps_4:,}",
            f"{ref.backbone}, {ref.crop}, {ref.batch} x {ref.gpus}, {ref.lr:g}, {ref.epochs or '-'}, "
            f"{row.reference_steps:,}",
        )
        family = row.experiment.split("_", 1)[1]
        grouped.setdefault((family, cells), []).append(row.experiment)
    lines = [header]
    for (_, cells), experiments in grouped.items():
        lines.append("| " + " | ".join([", ".join(experiments), *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    print(TABLE_BEGIN)
    print(markdown_table())
    print(TABLE_END)


if __name__ == "__main__":
    main()
    sys.exit(0)
