"""SIGTERM to a two-rank torchrun job: every rank stops at the same step with last.ckpt of that
step, and the same command with resume=auto finishes the run. Gloo on the CPU.

Two receivers. The whole process group, as SLURM and a cluster's preemption send it: torchrun
passes the signal on to each rank, so both ranks get it at about the same time. Rank 1 alone:
rank 0 never sees the signal and stops only because the ranks agree on it (`Sigterm.agreed`, an
all-reduce); without the agreement rank 1 would stop alone and rank 0 would train on."""

import json
import re

import pytest
import torch
from cli import TINY, rank_pid, start_torchrun, stop_with_sigterm, torchrun

from semiseg.checkpoints.io import LAST

pytestmark = pytest.mark.slow

RECEIVERS = {"process_group": None, "rank_1_alone": lambda proc: rank_pid(proc, 1)}


@pytest.mark.parametrize("receiver", RECEIVERS)
def test_sigterm_stops_every_rank_at_one_step_and_resume_finishes(tmp_path, toy_root, receiver):
    run = tmp_path / "run"
    common = [
        "train.py",
        "trainer=ddp",
        "method=unimatch",
        f"dataset.root={toy_root}",
        *TINY,
        "trainer.max_steps=12",
        "trainer.val_check_interval=4",
        f"hydra.run.dir={run}",
    ]
    log = tmp_path / "log"
    # the signal once training is under way on both ranks
    stop_with_sigterm(
        start_torchrun, *common, log=log, until="step 4: val mIoU", receiver=RECEIVERS[receiver]
    )
    output = log.read_text()
    # each rank says where it stopped (torchrun's own exit status is its SignalException's, or
    # that of its failed ranks)
    stops = dict(re.findall(r"rank (\d): stopped at step (\d+)", output))
    assert sorted(stops) == ["0", "1"], output[-3000:]
    assert len(set(stops.values())) == 1, stops  # one step for both ranks
    step = int(stops["0"])
    assert 4 <= step < 12
    assert f"preempted: SIGTERM at step {step}" in output
    # both ranks left through the preemption exit (143), none was killed by torchrun
    assert "Traceback" not in output.split("preempted:")[0]
    if receiver == "rank_1_alone":  # torchrun lists the ranks that ended before it stopped any
        exits = re.findall(r"exitcode\s*:\s*(-?\d+)", output)
        assert exits and set(exits) == {"143"}, output[-3000:]
    last = torch.load(run / "checkpoints" / LAST, map_location="cpu", weights_only=True)
    assert last["global_step"] == step
    assert len(last["semiseg"]["rng"]) == 2  # both ranks' generators, saved together
    assert not (run / "results.json").exists()

    resumed = torchrun(*common, "resume=auto")
    assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
    assert "resuming from" in resumed.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 12 and results["world_size"] == 2
    assert [h["step"] for h in results["val_history"]] == [4, 8, 12]
