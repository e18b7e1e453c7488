"""Faults a long run meets, made real: writes the kernel refuses (RLIMIT_FSIZE: a real EFBIG, as a
full disk gives ENOSPC; no root needed), an image that becomes unreadable mid-run, SIGTERM
during setup and during the final validation. Each ends in one line
and keeps what can be resumed."""

import json
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from cli import TINY, run_script, start_train, stop_with_sigterm
from lightning.pytorch.callbacks import Callback
from test_checkpointing import _fit
from test_full_disk import _one_line_error, _train

from semiseg.checkpoints.callback import RunCheckpoints
from semiseg.checkpoints.io import LAST, CheckpointWriteError, peek

pytestmark = pytest.mark.slow


class RefuseWritesAfter(Callback):
    """After optimizer step `step`, no file of the process may grow past half the size of the
    checkpoint in `folder`: its RLIMIT_FSIZE soft limit drops (SIGXFSZ ignored), so the kernel
    answers the next checkpoint write with a real EFBIG, as a full disk answers with ENOSPC,
    while small files (pytest's captured output) are still written. No root needed;
    `restore()` gives the limit back."""

    def __init__(self, folder: Path, step: int):
        self.folder, self.step = folder, step
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.getsignal(signal.SIGXFSZ)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
            limit = (self.folder / LAST).stat().st_size // 2
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self.saved[1]))

    def restore(self):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)
        signal.signal(signal.SIGXFSZ, self.handler)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    refuse = RefuseWritesAfter(tmp_path, 3)
    try:
        with pytest.raises(CheckpointWriteError) as err:
            _fit([RunCheckpoints(tmp_path, every_n_steps=2), refuse])
    finally:
        refuse.restore()
    message = str(err.value)
    assert "\n" not in message and "File too large" in message
    assert f"the previous {LAST} is kept" in message
    assert peek(tmp_path / LAST)["global_step"] == 2  # whole and loadable
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # no temporary file


def test_full_disk_in_train_py_is_one_line(tmp_path, toy_root):
    # train.py under a file-size limit of 1 MiB (test_full_disk.py): every checkpoint of the
    # tiny ResNet-18 is refused by the kernel; small files (config, logs) are written
    run = tmp_path / "run"
    proc = _train(run, toy_root, None, "method=supervised", "+trainer.limit_val_batches=2")
    out, err = proc.communicate(timeout=600)
    last = _one_line_error(proc, out, err)
    assert "cannot write checkpoint" in last
    assert not list((run / "checkpoints").iterdir())  # no half-written file left behind


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
    fresh = f"dataset.root={tmp_path / 'fresh'}"
    returncode = stop_with_sigterm(
        start_train, fresh, *TINY, f"hydra.run.dir={run}", log=log, timeout=120,
        until="generating toy dataset",  # takes seconds: the signal lands in it
    )  # fmt: skip
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
    returncode = stop_with_sigterm(
        start_train, *common, log=log, until="final validation at step 3", timeout=120
    )
    assert returncode == 143, log.read_text()[-3000:]
    assert "preempted: SIGTERM at step 3" in log.read_text()
    assert not (tmp_path / "run" / "results.json").exists()
    interrupted = peek(tmp_path / "run" / "checkpoints" / LAST)
    assert interrupted["global_step"] == 3
    # abandoned, not finished: no validation result printed or kept (a finished final
    # validation is recorded in val_history and last.ckpt is written after it)
    assert interrupted["semiseg"]["val_history"] == []
    assert "val mIoU" not in log.read_text()
    resumed = run_script("train.py", *common, "resume=auto", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 3 and [h["step"] for h in results["val_history"]] == [3]
    assert (
        torch.load(tmp_path / "run" / "checkpoints" / LAST, weights_only=True)["global_step"] == 3
    )
