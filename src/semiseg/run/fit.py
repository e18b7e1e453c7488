"""Train one run (one job of a sweep): fit, the final validation, preemption, results.json."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from semiseg.checkpoints.callback import RunCheckpoints
from semiseg.checkpoints.io import AtomicCheckpointIO, peek, why_unreadable
from semiseg.checkpoints.preemption import PREEMPTED_EXIT_CODE, Preempted, Sigterm
from semiseg.checkpoints.resume import config_mismatch, resume_checkpoint
from semiseg.dashboards import WandbPanels
from semiseg.data.splits import SplitError, split_name
from semiseg.distributed import RankSeed, from_rank_zero, init_process_group, shared_run_dir
from semiseg.errors import ConfigError, one_line
from semiseg.progress import progress_callbacks
from semiseg.run.build import (
    build_data_and_method,
    build_logger,
    check_backbone_init,
    finish_wandb,
    scaled_lr,
    trainer_arguments,
)
from semiseg.run.lock import RunLock, move_old_results
from semiseg.run.results import (
    OPTIMIZABLE,
    done_line,
    train_results,
    versus_reference,
    write_json_atomic,
)
from semiseg.selection.trust_callback import PseudoLabelTrust


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


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
    next step boundary or validation image once training is set up (checkpoints/preemption.py)."""
    started = time.time()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    with Sigterm() as sigterm:
        try:
            return _train_run(cfg, started, multirun, sigterm)
        except Preempted as stop:
            if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # each rank: where it stopped
                at = f"step {stop.step}" if stop.step is not None else "setup"
                print(f"rank {rank_zero_only.rank}: stopped at {at}", flush=True)
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
    lock = RunLock(out, resume=bool(cfg.get("resume")))
    try:
        return _train_in(cfg, out, lock, trainer_args, own, started, multirun, sigterm)
    finally:
        lock.release()


def _train_in(cfg, out: Path, lock: RunLock, trainer_args, own, started, multirun, sigterm):
    def claim_folder():  # rank 0: one run per folder; an earlier run's results moved aside
        for note in (lock.acquire(), move_old_results(out)):
            if note:
                print(note, flush=True)

    from_rank_zero(claim_folder)
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
    trust_cfg = cfg.get("trust") or {}
    if trust_cfg.get("log", True):  # pseudo-label precision, coverage, ECE at validation
        callbacks.append(PseudoLabelTrust(trust_cfg.get("target_precision")))
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

    results = train_results(cfg, trainer, module, trainer_args, backbone_init, resume_from)
    results["wall_time_s"] = round(checkpoints.elapsed_s(), 1)  # every segment of a resumed run
    if trainer.is_global_zero:  # one results.json per run, whatever the number of ranks
        write_json_atomic(out / "results.json", results)
        print(f"{done_line(results, module.task)}; results in {out}")
        if cfg.get("reference"):
            print(versus_reference(results, cfg.reference))
    return results


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
        raise ConfigError(
            f"resume={resume}: cannot read {resume_from}: {why_unreadable(err)}"
        ) from None
    if not saved:
        raise ConfigError(f"resume={resume}: {resume_from} is not a semiseg training checkpoint")
    differences = config_mismatch(saved, run_config)
    if differences:
        raise ConfigError(
            f"resume={resume}: {resume_from} is another run ({'; '.join(differences)}): use a new "
            "hydra.run.dir for this one, or resume with the checkpoint's settings"
        )
