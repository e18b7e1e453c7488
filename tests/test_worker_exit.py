"""A process whose DataLoader workers ignore SIGTERM (so that a cluster's signal to the process
group does not kill them mid-batch) must still exit when it is done, even with a persistent
loader still alive: multiprocessing ends leftover daemonic children with SIGTERM and waits."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

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


RACE = textwrap.dedent(
    """
    import signal
    from semiseg.distributed import SigtermSafeLoader, worker_init

    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    loader = SigtermSafeLoader(list(range(4)), batch_size=2, num_workers=2,
                               worker_init_fn=worker_init)
    print("ready", flush=True)
    for epoch in range(60):
        for batch in loader:  # not persistent: two new workers every epoch
            pass
    print(f"done after {len(received)} signals", flush=True)
    """
)


def test_sigterm_to_the_group_while_workers_start_kills_none(tmp_path):
    """SIGTERM to the whole process group every few milliseconds while workers are forked again
    and again: a worker signalled between its fork and its worker_init must not die (with a plain
    DataLoader one does: "DataLoader worker ... is killed by signal: Terminated")."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RACE], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.003)
    out, err = proc.communicate(timeout=60)
    # (the process may be ended by a last signal while the interpreter shuts down: not the point)
    done = re.search(r"done after (\d+) signals", out)
    assert done, err[-2000:]
    # the signals landed (the main process counted them) while workers were being started
    assert int(done[1]) >= 10, out
    assert "DataLoader worker" not in err
