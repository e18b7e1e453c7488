"""Two ranks on the CPU (gloo) under torchrun, and the launches that are refused."""

import json

import pytest
import torch
from cli import TINY, run_script, torchrun

# real processes (train.py, torchrun) killed and resumed: part of CI (make test SLOW=1)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    # A fresh toy root, as on a new clone: rank 0 generates it while rank 1 waits.
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    proc = torchrun(
        "train.py",
        "trainer=ddp",
        "method=unimatch",
        f"dataset.root={run_dir.parent / 'toy'}",
        *TINY,
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return run_dir, proc


def test_two_ranks_finish_and_write_results_once(ddp_run):
    run_dir, proc = ddp_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 3
    assert results["method"] == "unimatch"
    # rank 0 alone writes results.json and says so
    assert proc.stdout.count("done: unimatch") == 1
    assert proc.stdout.count("learning rate:") == 1
    assert proc.stdout.count("generating toy dataset") == 1  # one rank generated, the other read
    assert not list(run_dir.glob("results.json.tmp"))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert len(last["semiseg"]["rng"]) == 2  # each rank's random generators
    rank_states = [s["torch"] for s in last["semiseg"]["rng"]]
    assert not torch.equal(*rank_states)  # seed + rank: different augmentations per rank


def test_two_rank_validation_equals_single_process_eval(ddp_run, tmp_path):
    run_dir, _ = ddp_run
    trained = json.loads((run_dir / "results.json").read_text())
    proc = run_script(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "eval" / "results.json").read_text())
    # 100 validation images split 50/50 over the ranks, none repeated, summed: the same number.
    assert single["num_images"] == 100
    assert trained["val_miou"] == pytest.approx(single["val_miou"], abs=0.01)
    assert trained["per_class_iou"] == pytest.approx(single["per_class_iou"], abs=0.01)


@pytest.mark.parametrize("multirun", [False, True])
def test_lightning_spawned_ranks_are_refused(tmp_path, multirun):
    args = ["trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path}"]
    if multirun:
        args = [
            "-m",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "seed=0",
            f"hydra.sweep.dir={tmp_path}",
        ]
    proc = run_script("train.py", *args, timeout=120)
    assert proc.returncode != 0
    assert "torchrun --nproc_per_node=2 train.py trainer=ddp" in proc.stderr
    if multirun:
        assert "whole sweep" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))
