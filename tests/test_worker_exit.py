"""A process whose DataLoader workers ignore SIGTERM (so that a cluster's signal to the process
group does not kill them mid-batch) must still exit when it is done, even with a persistent
loader still alive: multiprocessing ends leftover daemonic children with SIGTERM and waits."""

import subprocess
import sys
import textwrap

from cli import REPO

SCRIPT = textwrap.dedent(
    """
    from torch.utils.data import DataLoader
    from semiseg.distributed import worker_init

    loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True,
                        worker_init_fn=worker_init)
    iterator = iter(loader)
    print(next(iterator).tolist(), flush=True)
    KEPT_UNTIL_EXIT = iterator  # never shut down: its workers are alive at interpreter exit
    """
)


def test_process_with_live_persistent_workers_exits():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[0, 1]"
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr


IN_THE_WINDOW = textwrap.dedent(
    """
    import os, signal, sys
    from torch.utils.data import DataLoader
    from semiseg.distributed import SigtermSafeLoader, worker_init

    def signalled_before_worker_init(worker_id):
        # A SIGTERM to the group that lands after the fork, before worker_init: sent here, in
        # every worker, so it always lands in that window.
        os.kill(os.getpid(), signal.SIGTERM)
        pending = signal.SIGTERM in signal.sigpending()  # blocked, not yet delivered
        print(f"worker {worker_id}: SIGTERM sent, pending {pending}", flush=True)
        worker_init(worker_id)

    loader_class = DataLoader if sys.argv[1] == "plain" else SigtermSafeLoader
    loader = loader_class(list(range(4)), batch_size=2, num_workers=2,
                          worker_init_fn=signalled_before_worker_init)
    print("images", sum(len(batch) for batch in loader), flush=True)
    """
)


def _in_the_window(loader: str):
    return subprocess.run(
        [sys.executable, "-c", IN_THE_WINDOW, loader], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_sigterm_to_a_worker_between_fork_and_worker_init_kills_none():
    """Every worker receives a real SIGTERM between its fork and worker_init (what torchrun's or
    SLURM's signal to the process group does when it comes while workers start): the signal
    stays blocked until worker_init ignores it, every worker lives, every image is read."""
    proc = _in_the_window("safe")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for worker in (0, 1):
        assert f"worker {worker}: SIGTERM sent, pending True" in proc.stdout, proc.stdout
    assert "images 4" in proc.stdout and "DataLoader worker" not in proc.stderr


def test_the_same_signal_kills_a_plain_loaders_worker():
    """The control: the same signal, in the same window, kills a plain DataLoader's worker, so
    the test above does test the window."""
    proc = _in_the_window("plain")
    assert proc.returncode != 0 and "pending" not in proc.stdout
    assert "DataLoader worker" in proc.stderr and "Terminated" in proc.stderr, proc.stderr[-2000:]
