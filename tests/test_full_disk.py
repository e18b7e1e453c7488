"""A disk that refuses checkpoint writes, without root: the processes run under RLIMIT_FSIZE
(set before exec; SIGXFSZ ignored), so every write past 1 MiB fails with a real EFBIG ("File too
large") from the kernel, as a full disk fails with ENOSPC. Small files (configs, logs) pass;
every checkpoint of the tiny ResNet-18 (tens of MiB) fails."""

import os
import resource
import signal
import socket
import subprocess
import sys

import pytest
from cli import REPO, TINY

pytestmark = pytest.mark.slow  # train.py processes (about 30-60 s on 2 busy cores)
LIMIT = 1 << 20


def _limited_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _train(run, toy_root, env=None, *overrides):
    return subprocess.Popen(
        [sys.executable, "train.py", f"dataset.root={toy_root}", *TINY, "logger=none",
         f"hydra.run.dir={run}", *overrides],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_limited_file_size,
    )  # fmt: skip


def _one_line_error(proc, out, err) -> str:
    assert proc.returncode == 1, (out[-2000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write checkpoint") and "File too large" in last, last
    return last


def test_a_refused_checkpoint_write_is_one_line_and_leaves_no_temporary(tmp_path, toy_root):
    run = tmp_path / "run"
    proc = _train(run, toy_root)
    out, err = proc.communicate(timeout=600)
    _one_line_error(proc, out, err)
    assert not list((run / "checkpoints").iterdir())  # no half-written file left behind


def test_under_ddp_every_rank_exits_with_the_write_error(tmp_path, toy_root):
    """Two ranks started as srun starts them (no torchrun agent to end the others): rank 0's
    failed write must reach rank 1, which otherwise waits in the next collective until its
    timeout (the communicate timeout below ends the test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    ranks = [
        _train(run, toy_root, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": str(r),
                               "LOCAL_RANK": str(r), "GROUP_RANK": "0"}, "trainer=ddp")
        for r in (0, 1)
    ]  # fmt: skip
    try:
        outputs = [rank.communicate(timeout=300) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    for rank, (out, err) in zip(ranks, outputs, strict=True):
        _one_line_error(rank, out, err)
