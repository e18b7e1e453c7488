"""Kill a run with a real SIGTERM mid-way, resume it, and compare with an uninterrupted run."""

import csv
import json
import os
import shutil
import signal

import pytest
import torch
from cli import (
    ONE_THREAD,
    TINY,
    resume_and_run_whole,
    run_script,
    start_train,
    stop_with_sigterm,
    wait_for,
)

# real processes (train.py, torchrun) killed and resumed: part of CI (make test SLOW=1)
pytestmark = pytest.mark.slow

# 20 steps, validation (on all 100 images, as eval.py) at 10 and 20, a periodic checkpoint every
# 4 steps, two DataLoader workers (a cluster's SIGTERM reaches them too).
SETTINGS = [
    *TINY,
    "method=unimatch",
    "data.num_workers=2",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.checkpoint_every=4",
    "trainer.log_every_n_steps=1",
]


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

    # 1. Start, wait for the first validation, then SIGTERM to the whole process group (what
    #    torchrun and SLURM send), DataLoader workers included.
    killed, log = tmp / "killed", tmp / "killed.log"
    returncode = stop_with_sigterm(
        start_train, *common, f"hydra.run.dir={killed}", log=log, until="step 10: val mIoU"
    )
    interrupted = torch.load(
        killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )

    # 2. The same command with resume=auto; 3. the same run, never interrupted.
    whole = tmp / "whole"
    resumed_stdout = resume_and_run_whole(common, killed, whole)
    return {
        "returncode": returncode,
        "log": log.read_text(),
        "interrupted": interrupted,
        "killed": killed,
        "resumed_stdout": resumed_stdout,
        "whole": whole,
    }


def test_sigterm_saves_a_checkpoint_and_stops(runs):
    assert runs["returncode"] == 128 + signal.SIGTERM, runs["log"][-3000:]
    assert "preempted: SIGTERM at step" in runs["log"]
    checkpoint = runs["interrupted"]
    assert 10 <= checkpoint["global_step"] < 20  # stopped mid-way, after the first validation
    state = checkpoint["semiseg"]
    assert [h["step"] for h in state["val_history"]] == [10]
    assert state["best_score"] == state["val_history"][0]["miou"]  # one validation so far
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
        runs["killed"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["global_step"] == 20
    # every segment counts: the resumed run's wall time includes the time before the kill
    elapsed = runs["interrupted"]["callbacks"]["RunCheckpoints"]["elapsed_s"]
    assert resumed["wall_time_s"] >= elapsed > 0


def _eval_miou(checkpoint, out_dir):
    proc = run_script("eval.py", f"ckpt_path={checkpoint}", f"hydra.run.dir={out_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / "results.json").read_text())["val_miou"]


def test_best_ckpt_gives_the_best_val_miou_after_a_kill_and_resume(runs, tmp_path):
    results = json.loads((runs["killed"] / "results.json").read_text())
    best = runs["killed"] / "checkpoints" / "best.ckpt"
    assert _eval_miou(best, tmp_path / "eval") == pytest.approx(results["best_val_miou"], abs=0.01)


def test_resume_into_a_new_run_directory_keeps_best_ckpt(runs, tmp_path, toy_root):
    """resume=PATH of a finished run into a new directory: nothing is left to train, and the new
    directory's best.ckpt must still be the one of best_val_miou."""
    new = tmp_path / "new"
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *SETTINGS,
        f"resume={runs['whole'] / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={new}",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((new / "results.json").read_text())
    best = new / "checkpoints" / "best.ckpt"
    assert _eval_miou(best, tmp_path / "eval") == pytest.approx(results["best_val_miou"], abs=0.01)


def test_resume_refuses_another_runs_checkpoint(runs, toy_root):
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *SETTINGS,
        "method=fixmatch",
        "seed=1",
        f"hydra.run.dir={runs['whole']}",
        "resume=auto",
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]  # one line, no traceback
    assert "method.name=unimatch there, fixmatch here" in lines[0]
    assert "seed=0 there, 1 here" in lines[0]


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


def test_kill_9_right_after_a_resume_starts_keeps_the_earlier_metrics_rows(
    runs, tmp_path, toy_root
):
    """Lightning deletes metrics.csv when the logger starts; the rows before the checkpoint must
    be on disk again before the run goes on (a kill -9 then must not lose them)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "csv").mkdir()
    shutil.copy(runs["whole"] / "checkpoints" / "last.ckpt", run / "checkpoints")
    shutil.copy(runs["whole"] / "csv" / "metrics.csv", run / "csv")
    before = _lr_rows(run)
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = start_train(
            f"dataset.root={toy_root}",
            *SETTINGS,
            "trainer.max_steps=40",  # more steps than the checkpoint: a run extended
            "resume=auto",
            f"hydra.run.dir={run}",
            log=out,
        )
        wait_for(proc, log, "resuming from")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert _lr_rows(run) == before and len(before) == 20


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
