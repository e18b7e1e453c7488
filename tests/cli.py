"""Run the entry points as a user would, with settings that take seconds on a CPU."""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Overrides that make a full train.py run take seconds on a CPU.
TINY = [
    "model.encoder=resnet18",
    "model.pretrained=scratch",
    "dataset.crop_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # predictable speed on a busy 2-core machine


def start_train(*overrides, log):
    """train.py in a process group of its own, as torchrun and SLURM start their workers."""
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        env={**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(proc, log_path, text, timeout=300):
    deadline = time.time() + timeout
    while text not in log_path.read_text():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.time() < deadline, f"no {text!r} within {timeout} s"
        time.sleep(0.02)


def run_script(script: str, *overrides: str, env: dict | None = None, timeout: int = 600):
    """Run train.py or eval.py as a user would, from the repository root."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, script, *overrides],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_on_toy(toy_root: Path, *overrides: str, env: dict | None = None):
    """train.py on the toy dataset at TINY settings without a logger, one thread: the run every
    end-to-end test starts from. Returns the finished process; the test fails with its output's
    tail if train.py failed."""
    flags = [o for o in overrides if o.startswith("-")]  # -m must come before the overrides
    proc = run_script(
        "train.py",
        *flags,
        f"dataset.root={toy_root}",
        *TINY,
        "logger=none",
        *(o for o in overrides if o not in flags),  # after TINY: the test's own values win
        env={**ONE_THREAD, **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def run_eval(run_dir: Path, eval_dir: Path, *overrides: str):
    """eval.py on a training run's last checkpoint, saving predictions into eval_dir."""
    return run_script(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={eval_dir}",
        "save_predictions=true",
        *overrides,
    )


def setup_fails(datamodule, capsys) -> str:
    """datamodule.setup("fit") as train.py runs it: exit code 2 and one `error: ...` line on
    stderr, no traceback; returns that line."""
    import pytest

    from semiseg.errors import exit_on_user_error

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(datamodule.setup)("fit")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err
    return lines[0]
