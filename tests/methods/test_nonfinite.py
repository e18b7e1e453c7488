"""NaN and inf losses through train.py: the step is skipped and logged, a run of them stops the
training in one line, and no checkpoint is written with non-finite weights."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from cli import REPO, TINY, run_script

POISONED = ["method=supervised", "method._target_=poisoned.PoisonedSupervised"]


def _train(tmp_path, toy_root, *overrides):
    path = os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])
    return run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
        env={"PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
    )


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_nan_loss_is_skipped_and_the_run_goes_on(tmp_path, toy_root):
    proc = _train(
        tmp_path, toy_root, *POISONED, "+method.poison_batches=[1]", "trainer.log_every_n_steps=1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1: loss nan (on this or another rank): step skipped (1 in a row, 1 in all)" in (
        proc.stdout
    )
    run = tmp_path / "run"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3  # three real steps: the skipped batch did not count
    # weights and BatchNorm statistics untouched by the NaN batch
    assert all(
        v.isfinite().all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )
    assert checkpoint["semiseg"]["nonfinite_steps"] == 1
    with open(next(run.rglob("metrics.csv"))) as f:
        counts = [
            float(r["train/nonfinite_steps"])
            for r in csv.DictReader(f)
            if r.get("train/nonfinite_steps")
        ]
    assert counts and max(counts) == 1.0


@pytest.mark.slow
def test_nan_losses_in_a_row_stop_the_run_in_one_line(tmp_path, toy_root):
    proc = _train(
        tmp_path,
        toy_root,
        *POISONED,
        "+method.poison_from=1",
        "optim.max_nonfinite_steps=3",
        "trainer.max_steps=10",
    )
    line = _one_line_error(proc)
    assert line.startswith("error: stopped at step 1: 3 non-finite losses or gradients in a row")
    assert "optim.max_nonfinite_steps=3" in line
    assert proc.stdout.count("step skipped") == 3
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_no_checkpoint_is_written_with_non_finite_weights(tmp_path, toy_root):
    # A weight decay near float32's limit: the first step (its loss finite) sends every
    # BatchNorm weight (1.0) to -inf; the periodic save after it must refuse them.
    proc = _train(
        tmp_path,
        toy_root,
        "method=supervised",
        "optim.lr=100",
        "optim.weight_decay=1e38",
        "optim.scale_lr=false",
        "trainer.checkpoint_every=1",
    )
    line = _one_line_error(proc)
    assert line.startswith("error: refusing to write a checkpoint at step 1: model.")
    assert "holds NaN or inf" in line
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_under_ddp_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path, toy_root):
    # Rank 1 alone sees the NaN: if rank 0 stepped while rank 1 skipped, rank 0's backward would
    # wait forever for rank 1's gradients (the timeout below ends it).
    path = os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["train.py", "trainer=ddp", f"dataset.root={toy_root}", *TINY, f"hydra.run.dir={run}"]
        + [*POISONED, "+method.poison_batches=[1]", "+method.poison_rank=1"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    # printed by rank 0, whose own loss was finite
    assert "step 1: loss " in proc.stdout and "step skipped (1 in a row, 1 in all)" in proc.stdout
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert all(
        v.isfinite().all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )
