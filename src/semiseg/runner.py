"""Build the objects a config describes and run them: training (train.py) and evaluation (eval.py).

The entry points only compose the config; everything they do is here, in the order it happens.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections import Counter
from pathlib import Path, PurePosixPath

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from semiseg.checkpointing import (
    BEST,
    LAST,
    PREEMPTED_EXIT_CODE,
    AtomicCheckpointIO,
    Preempted,
    RunCheckpoints,
    Sigterm,
    config_mismatch,
    peek,
    resume_checkpoint,
)
from semiseg.dashboards import WandbPanels
from semiseg.data import palettes
from semiseg.data.datamodule import build_val_dataset, load_class_names
from semiseg.data.splits import SplitError, split_name
from semiseg.distributed import (
    RankSeed,
    from_rank_zero,
    in_rank_order,
    init_process_group,
    launched_by_torchrun,
    resolve_devices,
    shared_run_dir,
)
from semiseg.errors import ConfigError, one_line
from semiseg.evaluation import change as change_eval
from semiseg.evaluation.inference import WINDOW_BATCH, center_crop, predict
from semiseg.evaluation.metrics import confusion_matrix, iou_per_class, mean_iou, subset_mious
from semiseg.evaluation.reports import plot_confusion, scores, write_confusion_csv
from semiseg.hardware import FAST, resolve_precision
from semiseg.models.encoders import describe_init, init_line
from semiseg.progress import progress_callbacks
from semiseg.results import versus_reference, write_json_atomic

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


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
    if cfg.dataset.get("task") == "change_detection":
        check_change_model(cfg)  # before any data is read
    method_cls = get_class(cfg.method._target_)
    datamodule = instantiate(cfg.data, **method_cls.data_requirements(cfg.method))

    def prepare():
        datamodule.prepare_data()
        datamodule.setup("fit")

    in_rank_order(prepare)
    class_names = load_class_names(cfg.dataset.classes, cfg.dataset.classes_file)
    miou_subsets(cfg.get("source"), cfg.dataset, class_names)  # names checked before training
    channels = cfg.dataset.get("in_channels")
    change_pairs = cfg.dataset.get("task") == "change_detection"
    if (
        not change_pairs
        and channels is not None
        and int(channels) != 3
        and "in_channels" not in cfg.model
    ):
        raise ConfigError(
            f"dataset={cfg.dataset.name} gives {channels}-channel images and "
            f"{cfg.model._target_.rsplit('.', 1)[-1]} takes RGB: use model=unet or "
            f"model=smp_unet (or experiment=unimatch_{cfg.dataset.name})"
        )
    if channels is not None and int(channels) != 3 and not change_pairs:
        # iMAS's and AugSeg's intensity ops and the in-step strong views work on RGB batches
        # normalised with the ImageNet statistics
        rgb_only = cfg.method.name in ("imas", "augseg") or (
            cfg.method.get("strong_views") == "step"
        )
        usable = "use supervised, fixmatch, unimatch, meanteacher or fst"
        if rgb_only:
            what = "strong_views=step" if cfg.method.name not in ("imas", "augseg") else "its"
            raise ConfigError(
                f"method={cfg.method.name} ({what} intensity ops on RGB batches) does not train "
                f"on the {channels}-channel images of dataset={cfg.dataset.name}: {usable}"
            )
        if cfg.method.name == "css":  # its representation head sits on DeepLabV3+'s decoder
            raise ConfigError(
                f"method=css needs DeepLabV3+'s decoder features, which take RGB images; "
                f"dataset={cfg.dataset.name} gives {channels}-channel images: {usable}"
            )
    model = instantiate(cfg.model, num_classes=len(class_names))
    module = instantiate(
        cfg.method,
        model=model,
        class_names=class_names,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        evaluation=OmegaConf.to_container(cfg.eval, resolve=True),
        crop_size=cfg.dataset.crop_size,
        channels_last=channels_last,
        compile=compile,
    )
    return datamodule, module


def check_change_model(cfg: DictConfig) -> None:
    """Change detection takes an image pair as 6 channels: the siamese model splits it. Every
    method trains on it (intensity ops draw per image of the pair; CSS's head is DeepLabV3+'s)."""
    target = str(cfg.model._target_)
    if not target.endswith("ChangeDeepLabV3Plus"):
        raise ConfigError(
            f"dataset={cfg.dataset.name} gives image pairs (A and B, 6 channels) and "
            f"model {target.rsplit('.', 1)[-1]} takes one image: use "
            f"model=siamese_deeplabv3plus (or experiment=unimatch_{cfg.dataset.name})"
        )


def train(cfg: DictConfig) -> dict:
    """Train one run (one job of a sweep) and write its results.json."""
    try:
        results = _train(cfg)
    except BaseException:  # a failed or preempted job: end its W&B run, then fail
        finish_wandb(exit_code=1)
        raise
    finish_wandb()
    return results


def _train(cfg: DictConfig) -> dict:
    """SIGTERM anywhere in the run ends it with exit status 143: at once during setup, at the
    next step boundary or validation image once training is set up (see checkpointing)."""
    started = time.time()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    with Sigterm() as sigterm:
        try:
            return _train_run(cfg, started, multirun, sigterm)
        except Preempted as stop:
            if rank_zero_only.rank == 0:
                where = (
                    f"hydra.sweep.dir={HydraConfig.get().sweep.dir}"
                    if multirun
                    else f"hydra.run.dir={run_dir()}"
                )
                at = f"at step {stop.step}" if stop.step is not None else "during setup"
                print(
                    f"preempted: {sigterm.signal_name} {at}; checkpoint {stop.path}. Continue "
                    f"with the same command plus resume=auto (and {where})",
                    flush=True,
                )
            finish_wandb(exit_code=PREEMPTED_EXIT_CODE)
            sigterm.pass_on()  # the launcher's signal: its handler requeues the job (submitit)
            raise SystemExit(PREEMPTED_EXIT_CODE) from None


def _train_run(cfg: DictConfig, started: float, multirun: bool, sigterm: Sigterm) -> dict:
    cfg.split = split_name(cfg.split)
    check_optimized_metric(cfg)
    trainer_args, own = trainer_arguments(cfg, multirun)
    init_process_group(trainer_args.get("accelerator", "auto"))
    out = shared_run_dir(run_dir())
    # Rank 0 decides (a requeued job's ranks must not disagree about a file being there).
    resume_from = from_rank_zero(lambda: resume_checkpoint(cfg.get("resume"), out / "checkpoints"))
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if resume_from:
        check_same_run(cfg.get("resume"), resume_from, run_config)
    backbone_init = check_backbone_init(cfg)  # before any data is read
    L.seed_everything(cfg.seed, workers=True)

    datamodule, module = build_data_and_method(
        cfg, channels_last=own["channels_last"], compile=own["compile"]
    )
    module.run_config = run_config

    checkpoint_dir = out / "checkpoints"
    checkpoints = RunCheckpoints(
        checkpoint_dir, every_n_steps=own["checkpoint_every"], sigterm=sigterm, started=started
    )
    logger = build_logger(cfg, resume_from, multirun)
    callbacks = [RankSeed(cfg.seed), checkpoints, *progress_callbacks(trainer_args)]
    if isinstance(logger, WandbLogger):
        callbacks.append(WandbPanels(num_images=int(cfg.logger.get("panel_images", 4))))
    trainer = instantiate(
        trainer_args,
        default_root_dir=str(out),
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    module.optim_cfg["lr"] = scaled_lr(cfg, trainer.world_size, verbose=trainer.is_global_zero)
    if resume_from and trainer.is_global_zero:
        print(f"resuming from {resume_from}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SplitError as err:  # an image found unreadable when loaded
        if checkpoints.saved_on_error is None:
            raise
        raise SplitError(
            f"{one_line(err)}; {checkpoints.path} holds step {checkpoints.saved_on_error}: fix "
            "or replace the file, then continue with the same command plus resume=auto"
        ) from None
    if resume_from:  # a run resumed at its last step trains nothing: best.ckpt is settled here
        checkpoints.settle_best(trainer, module, resume_from)
    if sigterm.agreed(trainer):  # during the last step: keep it, then stop
        checkpoints.save(trainer)
        raise Preempted(trainer.global_step, checkpoints.path)
    validate_final_weights(trainer, module, datamodule)
    if sigterm.agreed(trainer):
        raise Preempted(trainer.global_step, checkpoints.path)

    results = {
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "source": cfg.source.name if cfg.get("source") else None,  # domain adaptation
        "split": cfg.split,
        "seed": int(cfg.seed),
        "steps": int(trainer.global_step),
        "val_miou": module.val_history[-1]["miou"] if module.val_history else None,
        "best_val_miou": round(module.best_miou, 2) if module.val_history else None,
        "per_class_iou": module.last_per_class,
        "miou_convention": _convention(cfg.eval.absent_class),
        **_subset_results(cfg.get("source"), cfg.dataset, module, cfg.eval.absent_class),
        "eval_mode": cfg.eval.mode,
        "eval_network": module.eval_network_name,
        "val_history": module.val_history,
        "world_size": trainer.world_size,
        "precision": str(trainer_args.get("precision")),
        "init": backbone_init,
        "resumed_from": str(resume_from) if resume_from else None,
        "wall_time_s": round(checkpoints.elapsed_s(), 1),  # every segment of a resumed run
        "checkpoints": {"last": f"checkpoints/{LAST}", "best": f"checkpoints/{BEST}"},
    }
    if cfg.eval.mode == "volume":
        results.update(volume_results(module, cfg.eval.get("dice_absent", "skip")))
    if cfg.eval.get("task") == "change_detection":
        results.update(change_results(module))
    if trainer.is_global_zero:  # one results.json per run, whatever the number of ranks
        write_json_atomic(out / "results.json", results)
        score = f"val mIoU {results['val_miou']} (best {results['best_val_miou']})"
        if "val_iou_changed" in results:
            score = (
                f"val changed IoU {results['val_iou_changed']} (best "
                f"{results['best_val_iou_changed']}), mIoU {results['val_miou']}"
            )
        if "val_mean_dice" in results:
            score = (
                f"val mean Dice {results['val_mean_dice']} (best "
                f"{results['best_val_mean_dice']}), mIoU {results['val_miou']}"
            )
        print(
            f"done: {results['method']} on {results['dataset']} split {results['split']}: "
            f"{score} after {results['steps']} steps in {results['wall_time_s']} s; "
            f"results in {out}"
        )
        if cfg.get("reference"):
            print(versus_reference(results, cfg.reference))
    return results


# The results.json values train.py can return to a sweeper (`optimized_metric`).
OPTIMIZABLE = ("best_val_miou", "val_miou", "wall_time_s")


def check_optimized_metric(cfg: DictConfig) -> None:
    key = cfg.get("optimized_metric")
    if key is not None and key not in OPTIMIZABLE:
        raise ConfigError(
            f"optimized_metric={key}: train.py returns one of {', '.join(OPTIMIZABLE)} "
            "(or null: nothing)"
        )


def optimized_metric(cfg: DictConfig, results: dict) -> float | None:
    """The value train.py returns (what a Hydra sweeper such as Optuna optimises): the run's
    results.json value named by `optimized_metric`; None without one or without validations."""
    key = cfg.get("optimized_metric")
    value = results.get(key) if key else None
    return None if value is None else float(value)


def finish_wandb(exit_code: int | None = None) -> None:
    """End this job's W&B run: under -m the next job would otherwise log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)


def validate_final_weights(trainer, module, datamodule) -> None:
    """Make the last validation and last.ckpt describe the final weights, also when max_steps
    is not a multiple of val_check_interval (Lightning then stops without validating).
    RunCheckpoints writes last.ckpt (and best.ckpt, if better) after it, as after any other."""
    if not module.val_history or module.val_history[-1]["step"] != trainer.global_step:
        if trainer.is_global_zero:
            print(f"final validation at step {trainer.global_step}", flush=True)
        trainer.validate(module, datamodule=datamodule, verbose=False)


def check_same_run(resume, resume_from: Path, run_config: dict) -> None:
    """Refuse to continue another run's checkpoint (another method, model, dataset, split or
    seed) under this run's settings."""
    try:
        saved = peek(resume_from).get("semiseg", {}).get("config")
    except Exception as err:
        raise ConfigError(f"resume={resume}: cannot read {resume_from}: {one_line(err)}") from None
    if not saved:
        raise ConfigError(f"resume={resume}: {resume_from} is not a semiseg training checkpoint")
    differences = config_mismatch(saved, run_config)
    if differences:
        raise ConfigError(
            f"resume={resume}: {resume_from} is another run ({'; '.join(differences)}): use a new "
            "hydra.run.dir for this one, or resume with the checkpoint's settings"
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


def volume_results(module, absent: str) -> dict:
    """eval.mode=volume (ACDC): the mean Dice selects best.ckpt, so `best_val_miou` is the
    best mIoU of the history and `best_val_mean_dice` the selection score."""
    history = module.val_history
    return {
        "selection": "mean_dice",
        "best_val_miou": max((h["miou"] for h in history), default=None),
        "val_mean_dice": history[-1].get("mean_dice") if history else None,
        "best_val_mean_dice": round(module.best_miou, 2) if history else None,
        **module.last_dice,
        "dice_convention": (
            "per volume and class, averaged over volumes per class; mean over the foreground "
            f"classes; a class in neither prediction nor ground truth of a volume: {absent}"
        ),
    }


def change_results(module) -> dict:
    """Change detection: the changed-class IoU selects best.ckpt (the public code's rule: the
    first validation with the highest one); the scores of the last and of that validation."""
    history = [h for h in module.val_history if "iou_changed" in h]
    if not history:
        return {"selection": "iou_changed", "change_convention": change_eval.CONVENTION}
    last = history[-1]
    best = max(history, key=lambda h: h["iou_changed"])  # max keeps the first of equals
    return {
        "selection": "iou_changed",
        "best_val_miou": max(h["miou"] for h in module.val_history),
        "val_iou_changed": last["iou_changed"],
        "best_val_iou_changed": round(module.best_miou, 2),
        "change_scores": {k: last[k] for k in change_eval.KEYS},
        "best_change_scores": {"step": best["step"], **{k: best[k] for k in change_eval.KEYS}},
        "change_convention": change_eval.CONVENTION,
    }


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


def _subset_results(source, dataset, module, absent: str) -> dict:
    subsets = miou_subsets(source, dataset, list(module.class_names))
    if not subsets:
        return {}
    last = subset_mious(module.last_per_class, subsets, absent) if module.val_history else None
    return {"miou_subsets": last}


def _convention(absent: str) -> str:
    if absent == "zero":
        return "mean over all classes; a class absent from prediction and ground truth counts 0"
    return "mean over classes present in prediction or ground truth"


def _eval_dataset_config(cfg: DictConfig, trained: dict) -> DictConfig:
    """The checkpoint's dataset unless the command line chose one, plus `dataset.*` overrides."""
    overrides = list(HydraConfig.get().overrides.task)
    chose_dataset = any(o.split("=", 1)[0].lstrip("+~") == "dataset" for o in overrides)
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


def load_checkpoint(path: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path {path} does not exist: give a .ckpt written by train.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a checkpoint, or one carrying code: never run it
        raise ConfigError(
            f"ckpt_path {path} cannot be read as a checkpoint: {one_line(err)}"
        ) from None
    if "semiseg" not in checkpoint or not checkpoint["semiseg"].get("config"):
        raise ConfigError(f"{path} is not a semiseg training checkpoint (no 'semiseg' entry)")
    return checkpoint


def model_from_checkpoint(checkpoint: dict, network: str | None = None) -> torch.nn.Module:
    """The network a training run validated (or `network`: student | teacher), with its weights.

    Checkpoints name their networks (`semiseg.networks`: name -> state_dict prefix); older ones
    have only the student, under `model.`.
    """
    state = checkpoint["semiseg"]
    trained = state["config"]
    networks = state.get("networks", {"student": "model"})
    name = network or state.get("eval_network", "student")
    if name not in networks:
        raise ConfigError(
            f"eval.model={name}: this checkpoint holds {', '.join(networks)} "
            f"(method {trained['method']['name']})"
        )
    model_cfg = dict(trained["model"], pretrained="scratch")  # the checkpoint holds the weights
    model = instantiate(model_cfg, num_classes=len(state["class_names"]))
    prefix = networks[name] + "."
    weights = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    model.load_state_dict(weights)
    return model


def _run_record(cfg: DictConfig, checkpoint: dict, dataset_cfg) -> dict:
    """The first keys of eval.py's results.json: which checkpoint, run and data."""
    trained = checkpoint["semiseg"]["config"]
    return {
        "ckpt_path": str(cfg.ckpt_path),
        "method": trained["method"]["name"],
        "dataset": dataset_cfg.name,
        "split": trained.get("split"),
        "seed": trained.get("seed"),
        "steps": int(checkpoint.get("global_step", 0)),
    }


def evaluate(cfg: DictConfig) -> dict:
    started = time.time()
    out = run_dir()
    checkpoint = load_checkpoint(cfg.ckpt_path)
    trained = checkpoint["semiseg"]["config"]
    class_names = checkpoint["semiseg"]["class_names"]
    dataset_cfg = _eval_dataset_config(cfg, trained)
    mode = cfg.eval.mode or dataset_cfg.eval_mode
    crop_size = int(dataset_cfg.crop_size)
    if mode == "volume":
        return evaluate_volumes(cfg, checkpoint, dataset_cfg, class_names, out, started)

    dataset = build_val_dataset(dataset_cfg, num_classes=len(class_names))
    palette = palettes.resolve(dataset_cfg.get("palette"), len(class_names))

    device = inference_device(cfg.device)
    model = model_from_checkpoint(checkpoint, cfg.eval.get("model")).to(device).eval()
    confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.long)
    pred_dir = out / "predictions"
    pred_names = prediction_names([s.image for s in dataset.samples])

    for index in tqdm(range(len(dataset)), desc=f"eval ({mode})", unit="img"):
        item = dataset[index]
        image, mask = item["image"][None].to(device), item["mask"][None]
        if mode == "center_crop":
            image, mask = center_crop(image, mask, crop_size)
        probs = predict(
            model,
            image,
            mode,
            crop_size,
            len(class_names),
            cfg.eval.window_border,
            cfg.eval.get("window_batch", WINDOW_BATCH),
        )
        pred = probs.argmax(1).cpu()
        confusion += confusion_matrix(pred, mask, len(class_names))
        if cfg.save_predictions:
            path = pred_dir / pred_names[index]
            path.parent.mkdir(parents=True, exist_ok=True)
            palettes.save_index_png(path, pred[0].to(torch.uint8).numpy(), palette)

    ious = iou_per_class(confusion)
    miou = 100.0 * mean_iou(confusion, absent=cfg.eval.absent_class)
    per_class = {
        n: (None if torch.isnan(v) else round(100.0 * float(v), 2))
        for n, v in zip(class_names, ious, strict=True)
    }
    print(format_iou_table(per_class, miou))
    results = {
        **_run_record(cfg, checkpoint, dataset_cfg),
        "eval_mode": mode,
        "eval_network": cfg.eval.get("model")
        or checkpoint["semiseg"].get("eval_network", "student"),
        "val_miou": round(miou, 2),
        "per_class_iou": per_class,
        "miou_convention": _convention(cfg.eval.absent_class),
        **_eval_subsets(trained.get("source"), dataset_cfg, class_names, per_class, cfg),
        "num_images": len(dataset),
        "wall_time_s": round(time.time() - started, 1),
        **scores(confusion, class_names, cfg.eval.absent_class),
        "confusion_matrix": {"csv": "confusion_matrix.csv", "png": "confusion_matrix.png"},
    }
    if dataset_cfg.get("task") == "change_detection":
        change = change_eval.change_percent(confusion)
        results.update(
            change_scores=change,
            iou_changed=change["iou_changed"],
            change_convention=change_eval.CONVENTION,
        )
        print(
            f"changed IoU {change['iou_changed']}, F1 {change['f1']}, precision "
            f"{change['precision']}, recall {change['recall']}, overall accuracy "
            f"{change['overall_accuracy']}"
        )
    print(
        f"pixel accuracy {results['pixel_accuracy']}, mean Dice {results['mean_dice']}, "
        f"mean precision {results['mean_precision']}, mean recall {results['mean_recall']}, "
        f"Cohen's kappa {results['cohen_kappa']}; confusion matrix in {out}"
    )
    write_confusion_csv(out / "confusion_matrix.csv", confusion, class_names)
    plot_confusion(out / "confusion_matrix.png", confusion, class_names)
    write_json_atomic(out / "results.json", results)
    return results


def evaluate_volumes(cfg, checkpoint, dataset_cfg, class_names, out: Path, started) -> dict:
    """eval.mode=volume (ACDC): every validation volume slice by slice (evaluation/volume.py);
    Dice per class and volume, the mean over the foreground classes, and the mIoU of the summed
    confusion matrix. save_predictions=true writes predictions/<volume>.h5 (key `prediction`)."""
    from semiseg.data import medical
    from semiseg.evaluation.volume import dice_per_class, predict_volume, summarise

    root, splits_dir = Path(dataset_cfg.root), Path(dataset_cfg.splits_dir)
    samples = medical.read_h5_list(splits_dir / (dataset_cfg.get("val_list") or "val.txt"))
    medical.check_exist(root, samples, "val")
    dataset = medical.VolumeDataset(root, samples)
    device = inference_device(cfg.device)
    model = model_from_checkpoint(checkpoint, cfg.eval.get("model")).to(device).eval()
    n = len(class_names)
    absent = cfg.eval.get("dice_absent", "skip")
    confusion = torch.zeros(n, n, dtype=torch.long)
    names, table = [], []
    for index in tqdm(range(len(dataset)), desc="eval (volume)", unit="volume"):
        item = dataset[index]
        probs = predict_volume(model, item["image"].to(device), int(dataset_cfg.crop_size))
        pred = probs.argmax(1).cpu()
        confusion += confusion_matrix(pred, item["mask"], n)
        names.append(item["name"])
        table.append(dice_per_class(pred, item["mask"], n, absent))
        if cfg.save_predictions:
            import h5py

            (out / "predictions").mkdir(parents=True, exist_ok=True)
            with h5py.File(out / "predictions" / f"{item['name']}.h5", "w") as f:
                f.create_dataset("prediction", data=pred.to(torch.uint8).numpy())
    per_class, mean = summarise(torch.stack(table))

    def pct(x):
        return None if x != x else round(100.0 * float(x), 2)

    per_class_iou = {
        c: (None if torch.isnan(v) else round(100.0 * float(v), 2))
        for c, v in zip(class_names, iou_per_class(confusion), strict=True)
    }
    miou = 100.0 * mean_iou(confusion, absent=cfg.eval.absent_class)
    results = {
        **_run_record(cfg, checkpoint, dataset_cfg),
        "eval_mode": "volume",
        "eval_network": cfg.eval.get("model")
        or checkpoint["semiseg"].get("eval_network", "student"),
        "mean_dice": pct(mean),
        "per_class_dice": {c: pct(v) for c, v in zip(class_names[1:], per_class[1:], strict=True)},
        "per_volume_dice": {
            name: {c: pct(v) for c, v in zip(class_names[1:], row[1:], strict=True)}
            for name, row in zip(names, table, strict=True)
        },
        "dice_convention": (
            "per volume and class, averaged over volumes per class; mean over the foreground "
            f"classes; a class in neither prediction nor ground truth of a volume: {absent}"
        ),
        "val_miou": round(miou, 2),
        "per_class_iou": per_class_iou,
        "miou_convention": _convention(cfg.eval.absent_class),
        "num_volumes": len(dataset),
        "wall_time_s": round(time.time() - started, 1),
    }
    width = max(len(c) for c in class_names) + 2
    lines = [f"{'class':<{width}}Dice (%)"]
    lines += [f"{c:<{width}}{v}" for c, v in results["per_class_dice"].items()]
    lines.append(f"{'mean Dice':<{width}}{results['mean_dice']} (foreground classes)")
    print("\n".join(lines))
    write_confusion_csv(out / "confusion_matrix.csv", confusion, class_names)
    write_json_atomic(out / "results.json", results)
    return results


def _eval_subsets(source, dataset_cfg, class_names, per_class, cfg) -> dict:
    subsets = miou_subsets(source, dataset_cfg, class_names)
    if not subsets:
        return {}
    return {"miou_subsets": subset_mious(per_class, subsets, cfg.eval.absent_class)}


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


def format_iou_table(per_class: dict, miou: float) -> str:
    width = max(len(n) for n in per_class) + 2
    lines = [f"{'class':<{width}}IoU (%)", "-" * (width + 8)]
    for name, iou in per_class.items():
        lines.append(f"{name:<{width}}{'absent' if iou is None else f'{iou:6.2f}'}")
    lines += ["-" * (width + 8), f"{'mIoU':<{width}}{miou:6.2f}"]
    return "\n".join(lines)


def inference_device(choice: str) -> torch.device:
    """`device: auto` is the GPU when there is one, else the CPU; any other value is torch's name."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
