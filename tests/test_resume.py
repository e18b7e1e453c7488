"""Kill a run with a real SIGTERM mid-way, resume it, and compare with an uninterrupted run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli import REPO, TINY, run_script

# 20 steps, validation (on 20 images) at 10 and 20, a periodic checkpoint every 4 steps.
SETTINGS = [
    *TINY,
    "method=unimatch",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "+trainer.limit_val_batches=20",
    "trainer.checkpoint_every=4",
    "trainer.log_every_n_steps=1",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # predictable speed on a busy 2-core machine


def _lr_rows(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [
            (int(row["step"]), float(row["train/lr_backbone"]))
            for row in csv.DictReader(f)
            if row.get("train/lr_backbone")
        ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_root):
    tmp = tmp_path_factory.mktemp("resume")
    common = [f"dataset.root={toy_root}", *SETTINGS]

    # 1. Start, wait for the first validation, then SIGTERM (what a cluster sends).
    killed = tmp / "killed"
    log = tmp / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *common, f"hydra.run.dir={killed}"],
            cwd=REPO,
            env={**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300
        while "step 10: val mIoU" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no validation within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=300)
    interrupted = torch.load(
        killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )

    # 2. The same command with resume=auto.
    resumed = run_script(
        "train.py", *common, f"hydra.run.dir={killed}", "resume=auto", env=ONE_THREAD
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # 3. The same run, never interrupted.
    whole = tmp / "whole"
    proc_whole = run_script("train.py", *common, f"hydra.run.dir={whole}", env=ONE_THREAD)
    assert proc_whole.returncode == 0, proc_whole.stderr[-3000:]
    return {
        "returncode": returncode,
        "log": log.read_text(),
        "interrupted": interrupted,
        "killed": killed,
        "resumed_stdout": resumed.stdout,
        "whole": whole,
    }


def test_sigterm_saves_a_checkpoint_and_stops(runs):
    assert runs["returncode"] == 128 + signal.SIGTERM, runs["log"][-3000:]
    assert "preempted: SIGTERM at step" in runs["log"]
    checkpoint = runs["interrupted"]
    assert 10 <= checkpoint["global_step"] < 20  # stopped mid-way, after the first validation
    state = checkpoint["semiseg"]
    assert [h["step"] for h in state["val_history"]] == [10]
    assert state["best_miou"] == state["val_history"][0]["miou"] or state["best_miou"] > 0
    assert {"python", "numpy", "torch"} <= state["rng"][0].keys()


def test_resumed_run_ends_like_an_uninterrupted_one(runs):
    assert "resuming from" in runs["resumed_stdout"]
    resumed = json.loads((runs["killed"] / "results.json").read_text())
    whole = json.loads((runs["whole"] / "results.json").read_text())
    assert resumed.keys() == whole.keys()
    assert resumed["steps"] == whole["steps"] == 20
    steps = [h["step"] for h in resumed["val_history"]]
    assert steps == [h["step"] for h in whole["val_history"]] == [10, 20]
    # the validation before the kill is kept, and the best of both counts
    assert resumed["val_history"][0] == runs["interrupted"]["semiseg"]["val_history"][0]
    assert resumed["best_val_miou"] == pytest.approx(
        max(h["miou"] for h in resumed["val_history"]), abs=0.01
    )
    assert resumed["resumed_from"].endswith("last.ckpt") and whole["resumed_from"] is None
    last = torch.load(
        runs["killed"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert last["global_step"] == 20


def test_learning_rate_follows_the_poly_schedule_across_the_restart(runs):
    rows = _lr_rows(runs["killed"])
    logged_steps = [step for step, _ in rows]
    assert logged_steps == sorted(set(logged_steps))  # no step logged twice, none lost
    assert logged_steps[0] == 0 and logged_steps[-1] == 19 and len(rows) == 20
    whole = dict(_lr_rows(runs["whole"]))
    for step, lr in rows:
        assert lr == pytest.approx(whole[step], rel=1e-6)
    # poly: the rate set after step t (t = 0, 1, ...) is lr0 * (1 - t / 20) ** 0.9
    lr0 = rows[0][1]
    for step, lr in rows:
        assert lr == pytest.approx(lr0 * (1 - step / 20) ** 0.9, rel=1e-6)


def test_resume_auto_without_checkpoint_starts_afresh_and_bad_path_fails(tmp_path, toy_root):
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *TINY,
        "method=supervised",
        "logger=none",
        "resume=auto",
        "+trainer.limit_val_batches=5",
        f"hydra.run.dir={tmp_path / 'fresh'}",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" not in proc.stdout
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *TINY,
        f"resume={tmp_path / 'nothing.ckpt'}",
        f"hydra.run.dir={tmp_path / 'bad'}",
    )
    assert proc.returncode == 2
    assert "resume=" in proc.stderr.strip().splitlines()[-1]
