"""One run per folder, with real processes: a second train.py in a folder where a run is
training stops in one line; after a kill -9 the stale lock is taken over; a new run moves an
earlier run's results.json aside."""

import json
import os
import signal

import pytest
from cli import TINY, run_script, start_train, wait_for

LONG = [*TINY, "trainer.max_steps=2000", "trainer.val_check_interval=1000", "logger=none"]


@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_is_refused_then_the_stale_lock_taken(tmp_path, toy_root):
    run_dir = tmp_path / "run"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = start_train(f"dataset.root={toy_root}", *LONG, f"hydra.run.dir={run_dir}", log=log)
        try:
            wait_for(first, log_path, "learning rate:")  # set up: the lock is held
            lock = (run_dir / "run.lock").read_text().split()
            assert int(lock[1]) == first.pid
            second = run_script(
                "train.py", f"dataset.root={toy_root}", *TINY, "logger=none",
                f"hydra.run.dir={run_dir}", env={"OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            assert second.returncode == 2, second.stderr[-2000:]
            error = second.stderr.strip().splitlines()[-1]
            assert error.startswith("error: ") and "is in use by another run" in error
            assert f"pid {first.pid}" in error and "hydra.run.dir" in error
            assert first.poll() is None  # the first run goes on
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # kill -9: the lock stays behind
            first.wait()
    assert (run_dir / "run.lock").is_file()
    (run_dir / "results.json").write_text(json.dumps({"method": "earlier"}))
    third = run_script(
        "train.py", f"dataset.root={toy_root}", *TINY, "logger=none",
        f"hydra.run.dir={run_dir}", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        f"took over {run_dir / 'run.lock'} of a run that is gone (pid {first.pid}" in third.stdout
    )
    assert "moved to results.previous.json" in third.stdout
    assert json.loads((run_dir / "results.previous.json").read_text()) == {"method": "earlier"}
    assert json.loads((run_dir / "results.json").read_text())["method"] == "unimatch"
    assert not (run_dir / "run.lock").exists()  # released at the end


def test_default_run_folder_names_the_seed():
    """Two seeds launched in the same second get folders of their own."""
    from cli import REPO
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["seed=3"], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("outputs/unimatch_toy_20_s3/")
