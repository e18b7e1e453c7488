"""Build the objects a config describes, and check that they fit together, before any training:
the experiment logger, the Trainer's arguments (precision, memory format, devices), the backbone's
initialisation, the data module and the method's LightningModule around a fresh model.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from semiseg.checkpoints.io import peek
from semiseg.data.datamodule import load_class_names
from semiseg.distributed import in_rank_order, launched_by_torchrun, resolve_devices
from semiseg.errors import ConfigError
from semiseg.hardware import FAST, resolve_precision
from semiseg.models.encoders import describe_init, init_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub


def build_logger(cfg: DictConfig, resume_from: Path | None, multirun: bool):
    """The experiment logger of `cfg.logger` (or False), with the resolved config as its
    hyperparameters. W&B: grouped by sweep under -m, and a resumed run continues its W&B run.
    CSV: a resumed run keeps the rows logged before its checkpoint (Lightning deletes the file)."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
    logger_cfg.pop("panel_images", None)  # read by the W&B panel callback, not a logger argument
    is_wandb = logger_cfg["_target_"].endswith("WandbLogger")
    if is_wandb:
        if not logger_cfg.get("group") and multirun:
            logger_cfg["group"] = f"sweep-{Path(HydraConfig.get().sweep.dir).name}"
        elif not logger_cfg.get("group"):
            logger_cfg["group"] = logger_cfg.get("job_type")
        run_id = peek(resume_from).get("semiseg", {}).get("wandb_run_id") if resume_from else None
        if run_id:
            logger_cfg["id"] = run_id
    logger = instantiate(logger_cfg)
    if resume_from and isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
        _keep_csv_rows(logger, resume_from)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def _keep_csv_rows(logger: CSVLogger, resume_from: Path) -> None:
    """Keep the metrics.csv rows of the steps before the checkpoint (rows after it are re-run).

    Lightning deletes metrics.csv when its writer starts. The rows go to a side file first, synced,
    and are renamed back right after: a kill at any moment leaves them on disk (in the side file
    if between the two, where the next resume finds them)."""
    path = Path(logger.log_dir) / "metrics.csv"
    side = path.with_name(path.name + ".resume")
    source = path if path.is_file() else side
    if not source.is_file():
        logger.experiment  # noqa: B018 (starts the writer, as log_hyperparams would)
        return
    step = int(peek(resume_from).get("global_step", 0))
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    # Lightning logs a step's values under step index global_step - 1.
    rows = [r for r in rows if r.get("step", "") != "" and float(r["step"]) < step]
    header = sorted({k for r in rows for k, v in r.items() if v != ""})
    if not header:  # nothing logged before the checkpoint
        logger.experiment  # noqa: B018
        side.unlink(missing_ok=True)
        return
    if source == path:
        write_csv_atomic(side, header, rows)
    logger.experiment  # noqa: B018 (Lightning deletes metrics.csv here)
    os.replace(side, path)
    logger.experiment.metrics_keys = list(header)  # later rows append under the same header


def write_csv_atomic(path: Path, header: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def trainer_arguments(cfg: DictConfig, multirun: bool) -> tuple[dict, dict]:
    """Split `cfg.trainer` into lightning.Trainer arguments and this project's own keys
    (`checkpoint_every`, `channels_last`, `compile`), resolve devices for torchrun, and refuse
    launches that would make Lightning re-run this Hydra script."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    own = {"checkpoint_every": args.pop("checkpoint_every", None)}
    channels_last = args.pop("channels_last", "auto")
    own["compile"] = bool(args.pop("compile", False))
    args = resolve_devices(args, multirun)
    on_gpu = args.get("accelerator", "auto") in ("auto", "gpu", "cuda") and (
        torch.cuda.is_available()
    )
    if str(args.get("precision")) == FAST:
        args["precision"] = resolve_precision(FAST, on_gpu)
        if rank_zero_only.rank == 0:
            print(f"trainer.precision=fast: {args['precision']} on this machine")
    device_type = "cuda" if on_gpu else str(args.get("accelerator", "auto")).replace("auto", "cpu")
    half = "16" in str(args.get("precision", "32-true"))  # bf16-mixed, 16-mixed, bf16-true
    own["channels_last"] = resolve_channels_last(channels_last, device_type, half)
    if args.get("sync_batchnorm") and not on_gpu:
        # torch's SyncBatchNorm only runs on GPUs; on CPUs each rank keeps its own statistics.
        args["sync_batchnorm"] = False
        if launched_by_torchrun() and int(os.environ["RANK"]) == 0:
            print("note: SyncBatchNorm needs GPUs; on CPUs each rank normalises its own batch")
    return args, own


def resolve_channels_last(setting, device_type: str, half_precision: bool) -> bool:
    """`trainer.channels_last`: true, false, or auto (the default): NHWC where it is faster.
    CPUs (oneDNN): NHWC in fp32 (UniMatch R101 model compute, 1 thread: 1.2x on a quiet core,
    1.01-1.07x on a loaded one) and in bf16 (the fast path, measured in NHWC). CUDA: NHWC with
    bf16/fp16, whose tensor-core convolutions run in NHWC; NCHW in fp32, where cuDNN gains little
    from NHWC (not measured here: no GPU). Other devices: NCHW."""
    text = str(setting).lower()
    if text in ("true", "false"):
        return text == "true"
    if text != "auto":
        raise ConfigError(f"trainer.channels_last={setting!r}: use true, false or auto")
    if device_type == "cpu":
        return True
    return device_type == "cuda" and half_precision


def check_backbone_init(cfg: DictConfig, verbose: bool = True) -> dict:
    """The backbone's initialisation (results.json's `init`); a missing weights file fails here,
    in one line, before any data is read."""
    model = cfg.model
    if model.get("pretrained", "scratch") is None:
        raise ConfigError(
            "model.pretrained is null: write model.pretrained=imagenet (the papers' ImageNet "
            "backbone), model.pretrained=scratch (random weights) or model.pretrained=PATH"
        )
    init = describe_init(
        model.encoder,
        model.get("pretrained", "scratch"),
        model.get("pretrained_dir", "."),
        model.get("deep_stem", True),
    )
    if verbose and rank_zero_only.rank == 0:
        print(init_line(model.encoder, init), flush=True)
    return init


def build_data_and_method(cfg: DictConfig, channels_last: bool = False, compile: bool = False):
    """The data module (set up) and the method's LightningModule around a fresh model.

    Data first: a bad root, split or file list fails here, before any model is built. Under
    torchrun rank 0 generates what is missing (toy data, splits) while the others wait.
    """
    method_cls = get_class(cfg.method._target_)
    check_inputs(cfg, method_cls, get_class(cfg.model._target_))  # before any data is read
    datamodule = instantiate(cfg.data, **method_cls.data_requirements(cfg.method))

    def prepare():
        datamodule.prepare_data()
        datamodule.setup("fit")

    in_rank_order(prepare)
    class_names = load_class_names(cfg.dataset.classes, cfg.dataset.classes_file)
    subsets = miou_subsets(cfg.get("source"), cfg.dataset, class_names)  # checked before training
    evaluation = OmegaConf.to_container(cfg.eval, resolve=True)
    evaluation["miou_subsets"] = subsets
    model = instantiate(cfg.model, num_classes=len(class_names))
    module = instantiate(
        cfg.method,
        model=model,
        class_names=class_names,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        evaluation=evaluation,
        crop_size=cfg.dataset.crop_size,
        channels_last=channels_last,
        compile=compile,
    )
    return datamodule, module


INPUTS = {
    "rgb": "RGB images",
    "channels": "{n}-channel images",
    "pair": "image pairs (A and B, 6 channels)",
}


def input_kind(dataset) -> str:
    """What the dataset's items are: rgb, channels (another number of channels) or pair."""
    if dataset.get("input"):
        return str(dataset.input)
    return "rgb" if int(dataset.get("in_channels") or 3) == 3 else "channels"


def check_inputs(cfg: DictConfig, method_cls, model_cls) -> None:
    """The model takes the dataset's items, and the method's needs (declared on its class: RGB
    batches for in-step intensity ops, decoder features for a representation head) are met."""
    dataset, kind = cfg.dataset, input_kind(cfg.dataset)
    given = INPUTS[kind].format(n=dataset.get("in_channels"))
    model_name = str(cfg.model._target_).rsplit(".", 1)[-1]
    hint = (
        f"use {dataset.get('model_hint', 'another model')} (or experiment=unimatch_{dataset.name})"
    )
    if kind not in getattr(model_cls, "inputs", ("rgb",)):
        takes = " or ".join(INPUTS[k].format(n="N") for k in model_cls.inputs)
        raise ConfigError(
            f"dataset={dataset.name} gives {given} and model {model_name} takes {takes}: {hint}"
        )
    method = cfg.method.name
    if kind == "channels" and method_cls.needs_rgb_batches(cfg.method):
        raise ConfigError(
            f"method={method} draws intensity ops on RGB batches in its step and does not train "
            f"on the {given} of dataset={dataset.name}: use a method without in-step intensity "
            "ops (docs/methods.md)"
        )
    if cfg.model.get("aux_head") and not method_cls.trains_aux_head:
        raise ConfigError(
            f"model.aux_head=true: method={method} has no loss for an auxiliary head (imas "
            "trains one); set model.aux_head=false"
        )
    if method_cls.needs_decoder_features and not getattr(model_cls, "decoder_features", False):
        raise ConfigError(
            f"method={method} needs decoder features (its representation head), which model "
            f"{model_name} does not give: use model=deeplabv3plus, on RGB images"
        )


def scaled_lr(cfg: DictConfig, world_size: int, verbose: bool = True) -> float:
    """The papers' lr is for a total batch of `optim.reference_batch` (4 GPUs x 2 images on
    Pascal); scale it linearly to this run's total labeled batch unless `optim.scale_lr=false`."""
    lr = float(cfg.optim.lr)
    total = int(cfg.data.batch_size) * world_size
    if cfg.optim.scale_lr and cfg.optim.reference_batch:
        effective = lr * total / float(cfg.optim.reference_batch)
        if verbose:
            print(
                f"learning rate: {effective:g} (optim.lr {lr:g} at total batch "
                f"{cfg.optim.reference_batch}, scaled to {world_size} device(s) x "
                f"{cfg.data.batch_size})"
            )
        return effective
    if verbose:
        print(f"learning rate: {lr:g} (total batch {total}, not scaled)")
    return lr


def miou_subsets(source, dataset, class_names: list[str]) -> dict[str, list[str]]:
    """`miou_subsets` of the source dataset (SYNTHIA: miou16, miou13), else of the dataset: the
    means results.json reports beside the mIoU. Every name must be a class."""
    table = (source or {}).get("miou_subsets") or (dataset or {}).get("miou_subsets") or {}
    subsets = {str(k): [str(c) for c in v] for k, v in table.items()}
    for key, names in subsets.items():
        unknown = [n for n in names if n not in class_names]
        if unknown or not names:
            raise ConfigError(
                f"miou_subsets.{key} names {unknown or 'no class'}, not classes of this run "
                f"({', '.join(class_names)})"
            )
    return subsets


def finish_wandb(exit_code: int | None = None) -> None:
    """End this job's W&B run: under -m the next job would otherwise log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)
