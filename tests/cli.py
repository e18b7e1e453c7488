"""Run the entry points as a user would, with settings that take seconds on a CPU."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


# Two steps and one validation on a dataset of any layout at crop 32 (ACDC, change pairs).
TWO_STEPS = [
    "dataset.crop_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.max_epochs=null",
    "trainer.val_check_interval=2",
    "trainer.check_val_every_n_epoch=null",
    "trainer.enable_progress_bar=false",
]

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # predictable speed on a busy 2-core machine


def _start_in_own_group(command: list, env: dict, log):
    """A process in a process group of its own, as torchrun and SLURM start their workers: a
    signal to the group (`stop_with_sigterm`) reaches it and the processes it starts there
    (DataLoader workers; torchrun's ranks sit in groups of their own, torchrun passes it on)."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_train(*overrides, log):
    """train.py in a process group of its own, its output into the open file `log`."""
    return _start_in_own_group([sys.executable, "train.py", *overrides], ONE_THREAD, log)


# Two ranks on one machine; the environment keeps them to one thread each and offline.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TORCHRUN_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def torchrun(*args: str, timeout: int = 600):
    """Two ranks under torchrun, run to the end; the finished process with its output."""
    return subprocess.run(
        [*TORCHRUN, *args],
        cwd=REPO,
        env={**os.environ, **TORCHRUN_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_torchrun(*args: str, log):
    """Two ranks under torchrun in a process group of its own, its output into `log`."""
    return _start_in_own_group([*TORCHRUN, *args], TORCHRUN_ENV, log)


def wait_for(proc, log_path, until: str | Callable[[], bool], timeout=300):
    """Wait until the text `until` is in the log (or the callable `until` returns true); fails
    with the log's tail if the process ends first."""
    ready = until if callable(until) else lambda: until in log_path.read_text()
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.time() < deadline, (
            f"no {getattr(until, '__name__', repr(until))} within {timeout} s"
        )
        time.sleep(0.02)


def stop_with_sigterm(start, *args, log: Path, until, timeout=300, receiver=None) -> int:
    """Start `start(*args)` (start_train, start_torchrun) with its output into `log`, wait
    `until` (wait_for), then SIGTERM its whole process group, as SLURM and a cluster's preemption
    send it (DataLoader workers included; torchrun passes it on to its ranks), or, with
    `receiver`, only the process `receiver(proc)` names (`rank_pid`: one rank). Returns the exit
    status; a run still going after `timeout` fails the test and is ended (`_end`)."""
    with open(log, "w") as out:
        proc = start(*args, log=out)
        try:
            wait_for(proc, log, until)
            if receiver is None:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                os.kill(receiver(proc), signal.SIGTERM)
            return proc.wait(timeout=timeout)
        finally:
            end_group(proc)


def end_group(proc) -> None:
    """End a process started in its own group that is still running (a failed test's): SIGTERM
    to the group (torchrun ends its ranks, which sit in process groups of their own), then
    SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rank_pid(torchrun_proc, rank: int) -> int:
    """The process id of one rank of a torchrun job: the child of torchrun started with
    RANK=`rank` in its environment (read from /proc: Linux)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # ended meanwhile, or not ours to read
            continue
        if parent == torchrun_proc.pid and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} among torchrun's ({torchrun_proc.pid}) children")


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


def resume_and_run_whole(common, stopped: Path, whole: Path) -> str:
    """The stopped run's command again with resume=auto (into `stopped`), then the same run
    never stopped (into `whole`), each on one thread as start_train runs it; the resumed run's
    output. Fails with the output's tail if either run fails."""
    resumed = run_script(
        "train.py", *common, f"hydra.run.dir={stopped}", "resume=auto", env=ONE_THREAD
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = run_script("train.py", *common, f"hydra.run.dir={whole}", env=ONE_THREAD)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return resumed.stdout
