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
