"""Faults a long run meets, made real: a full filesystem (a small tmpfs), an image that becomes
unreadable mid-run, SIGTERM during setup and during the final validation. Each ends in one line
and keeps what can be resumed."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli import TINY, run_script, start_train, wait_for
from lightning.pytorch.callbacks import Callback
from test_checkpointing import _fit

from semiseg.checkpoints.callback import RunCheckpoints
from semiseg.checkpoints.io import LAST, CheckpointWriteError, peek

pytestmark = pytest.mark.slow


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB filesystem of its own (root only), unmounted afterwards."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


class FillDiskAfter(Callback):
    """Fill the filesystem of `folder` to the last byte after optimizer step `step`."""

    def __init__(self, folder: Path, step: int):
        self.folder, self.step = folder, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        stat = os.statvfs(self.folder)
        with open(self.folder / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize)
        assert os.statvfs(self.folder).f_bavail == 0


def test_full_disk_keeps_the_previous_checkpoint(small_tmpfs):
    with pytest.raises(CheckpointWriteError) as err:
        _fit([RunCheckpoints(small_tmpfs, every_n_steps=2), FillDiskAfter(small_tmpfs, 3)])
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message
    assert f"the previous {LAST} is kept" in message
    assert peek(small_tmpfs / LAST)["global_step"] == 2  # whole and loadable
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", LAST]  # no temp file


def test_full_disk_in_train_py_is_one_line(tmp_path, toy_root, small_tmpfs):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(small_tmpfs)  # the checkpoints land on the 2 MiB disk
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *TINY,
        "method=supervised",
        "+trainer.limit_val_batches=2",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write checkpoint") and "No space left" in last, last
    assert not list(small_tmpfs.iterdir())  # no half-written file left behind


def _small_copy(toy_root: Path, folder: Path) -> Path:
    """The toy dataset's files and lists, copied (so that the test may spoil its images)."""
    shutil.copytree(toy_root, folder)
    return folder


def test_image_unreadable_mid_run_saves_last_then_one_line(tmp_path, toy_root):
    root = _small_copy(toy_root, tmp_path / "toy")
    run = tmp_path / "run"
    log = tmp_path / "log"
    metrics = run / "csv" / "metrics.csv"
    with open(log, "w") as out:
        proc = start_train(
            f"dataset.root={root}",
            *TINY,
            "method=supervised",
            "split=10",
            "trainer.max_steps=200",
            "trainer.val_check_interval=100",
            "trainer.log_every_n_steps=1",
            "+logger.flush_logs_every_n_steps=1",
            f"hydra.run.dir={run}",
            log=out,
        )
        # A few steps logged: setup (and its checks) passed, no checkpoint written yet.
        deadline = time.time() + 300
        while not metrics.is_file() or len(metrics.read_text().splitlines()) < 4:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        assert not (run / "checkpoints" / LAST).exists()
        for line in (root / "splits" / "10" / "labeled.txt").read_text().split("\n"):
            if line.strip():
                image = root / line.split()[0]
                image.write_bytes(image.read_bytes()[:200])  # truncated, as by a failed copy
        returncode = proc.wait(timeout=300)
    output = log.read_text()
    assert returncode == 2, output[-3000:]
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image") and "truncated" in last
    saved = peek(run / "checkpoints" / LAST)["global_step"]
    assert saved >= 3 and f"holds step {saved}" in last, last  # the steps before it, kept


def test_sigterm_during_setup_exits_143(tmp_path):
    log = tmp_path / "log"
    run = tmp_path / "run"
    with open(log, "w") as out:
        proc = start_train(
            f"dataset.root={tmp_path / 'fresh'}", *TINY, f"hydra.run.dir={run}", log=out
        )
        wait_for(proc, log, "generating toy dataset")  # takes seconds: the signal lands in it
        os.killpg(proc.pid, signal.SIGTERM)
        returncode = proc.wait(timeout=120)
    assert returncode == 143, log.read_text()[-3000:]
    assert "preempted: SIGTERM during setup" in log.read_text()
    assert not (run / "results.json").exists()


def test_sigterm_during_the_final_validation_exits_143_and_resumes(tmp_path, toy_root):
    """max_steps not a multiple of val_check_interval: the run validates the final weights
    after fit; a SIGTERM there keeps the final step and the resumed run only validates."""
    common = [
        f"dataset.root={toy_root}",
        *TINY,
        "method=supervised",
        "data.num_workers=2",
        "trainer.val_check_interval=10",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = start_train(*common, log=out)
        wait_for(proc, log, "final validation at step 3")
        os.killpg(proc.pid, signal.SIGTERM)
        returncode = proc.wait(timeout=120)
    assert returncode == 143, log.read_text()[-3000:]
    assert "preempted: SIGTERM at step 3" in log.read_text()
    assert not (tmp_path / "run" / "results.json").exists()
    assert peek(tmp_path / "run" / "checkpoints" / LAST)["global_step"] == 3
    resumed = run_script("train.py", *common, "resume=auto", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 3 and [h["step"] for h in results["val_history"]] == [3]
    assert (
        torch.load(tmp_path / "run" / "checkpoints" / LAST, weights_only=True)["global_step"] == 3
    )
