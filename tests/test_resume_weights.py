"""A run stopped by a real SIGTERM and resumed should end with the very weights of a run never
stopped: the student, and for a teacher-student method the EMA teacher and its update counter,
bit for bit, and the same validation scores.

Why bitwise should be possible here: the SIGTERM lands in the validation of step 5, the last
step of the first epoch (a split of 10 labeled and 10 unlabeled images, two a batch). The
validation is abandoned and last.ckpt holds step 5; the resumed run validates step 5 again and
draws epoch 2 as the uninterrupted run does. What made the two differ before
(data/sampling.py): every DataLoader iterator drew its base seed from the process's torch
generator, the resumed run creates its iterators at other times (before validating again) and
prefetches a batch between, and with no workers the augmentations drew from the same generators.
A stop mid-epoch could not compare bitwise: the rest of that epoch is drawn afresh, not the
batches the uninterrupted run drew. No workers (num_workers=0) keeps the test short; the batches
are the same with workers (tests/data/test_sampling.py). One thread (start_train, ONE_THREAD): the
CPU kernels sum in one order.
"""

import csv
import json
import shutil

import pytest
import torch
from cli import TINY, resume_and_run_whole, start_train, stop_with_sigterm

from semiseg.checkpoints.io import LAST

pytestmark = pytest.mark.slow

EPOCH_STEPS = 5  # 10 labeled and 10 unlabeled images, 2 a batch


def _short_split(toy_root, folder):
    """The toy dataset with split 10's unlabeled list cut to 10 images: 5-step epochs."""
    shutil.copytree(toy_root, folder)
    unlabeled = folder / "splits" / "10" / "unlabeled.txt"
    unlabeled.write_text("".join(unlabeled.read_text().splitlines(keepends=True)[:10]))
    return folder


def _logged_steps(metrics):
    if not metrics.is_file():
        return set()
    with open(metrics) as f:
        return {int(row["step"]) for row in csv.DictReader(f) if row.get("train/lr_backbone")}


def _stop_in_the_validation_of(step, common, run, log):
    """SIGTERM to the process group once step `step`'s training row is on disk: after the
    signal check that starts that step, before its validation (100 images) ends. The run
    abandons the validation and keeps step `step`."""

    def step_logged():  # rows count from 0
        return step - 1 in _logged_steps(run / "csv" / "metrics.csv")

    return stop_with_sigterm(
        start_train, *common, f"hydra.run.dir={run}", log=log, until=step_logged
    )


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", params=["unimatch", "meanteacher"])
def runs(request, tmp_path_factory, toy_root):
    tmp = tmp_path_factory.mktemp(request.param)
    root = _short_split(toy_root, tmp / "toy")
    common = [
        f"dataset.root={root}",
        *TINY,
        f"method={request.param}",
        "split=10",
        "trainer.max_steps=10",
        f"trainer.val_check_interval={EPOCH_STEPS}",
        "trainer.log_every_n_steps=1",
        "+logger.flush_logs_every_n_steps=1",
    ]
    killed, log = tmp / "killed", tmp / "killed.log"
    returncode = _stop_in_the_validation_of(EPOCH_STEPS, common, killed, log)
    interrupted = _load(killed / "checkpoints" / LAST)
    whole = tmp / "whole"
    resumed_stdout = resume_and_run_whole(common, killed, whole)
    return {
        "method": request.param,
        "returncode": returncode,
        "log": log.read_text(),
        "interrupted": interrupted,
        "resumed_stdout": resumed_stdout,
        "resumed": _load(killed / "checkpoints" / LAST),
        "whole": _load(whole / "checkpoints" / LAST),
        "resumed_results": json.loads((killed / "results.json").read_text()),
        "whole_results": json.loads((whole / "results.json").read_text()),
    }


def test_the_sigterm_stopped_the_run_in_its_epoch_end_validation(runs):
    assert runs["returncode"] == 143, runs["log"][-3000:]
    assert f"preempted: SIGTERM at step {EPOCH_STEPS}" in runs["log"]
    assert runs["interrupted"]["global_step"] == EPOCH_STEPS
    assert runs["interrupted"]["semiseg"]["val_history"] == []  # abandoned, not finished
    assert "resuming from" in runs["resumed_stdout"]


def test_resumed_weights_equal_the_uninterrupted_runs_bitwise(runs):
    resumed, whole = runs["resumed"]["state_dict"], runs["whole"]["state_dict"]
    assert runs["resumed"]["global_step"] == runs["whole"]["global_step"] == 10
    assert resumed.keys() == whole.keys()
    differ = [k for k in whole if not torch.equal(resumed[k], whole[k])]
    assert not differ, f"{len(differ)} of {len(whole)} tensors differ, e.g. {differ[:3]}"
    # and the weights moved after the stop: the comparison is not of untouched weights
    stopped = runs["interrupted"]["state_dict"]
    assert any(not torch.equal(stopped[k], whole[k]) for k in whole if k.startswith("model."))
    # the scores follow: the same validations at 5 and 10
    for key in ("val_miou", "best_val_miou"):
        assert runs["resumed_results"][key] == runs["whole_results"][key]
    steps = [h["step"] for h in runs["resumed_results"]["val_history"]]
    assert steps == [EPOCH_STEPS, 10]


def test_ema_counter_and_step_resume_exactly(runs):
    if runs["method"] != "meanteacher":
        pytest.skip("no teacher")
    stopped = runs["interrupted"]
    assert stopped["global_step"] == EPOCH_STEPS
    assert stopped["semiseg"]["ema_updates"] == EPOCH_STEPS  # one update per step so far
    assert any(k.startswith("teacher.") for k in stopped["state_dict"])  # the teacher is saved
    # the resumed run counts on from the checkpoint's counter: 10 updates in 10 steps, as the
    # uninterrupted run (restarted from 0, it would end at 5 and copy the student again)
    assert runs["resumed"]["semiseg"]["ema_updates"] == runs["whole"]["semiseg"]["ema_updates"]
    assert runs["whole"]["semiseg"]["ema_updates"] == 10


def test_teacher_resumes_exactly(runs):
    if runs["method"] != "meanteacher":
        pytest.skip("no teacher")
    teacher = [k for k in runs["whole"]["state_dict"] if k.startswith("teacher.")]
    for key in teacher:
        assert torch.equal(runs["resumed"]["state_dict"][key], runs["whole"]["state_dict"][key])
    # the teacher moved after the stop (EMA of a trained student), so restoring it mattered
    stopped = runs["interrupted"]["state_dict"]
    assert any(not torch.equal(stopped[k], runs["whole"]["state_dict"][k]) for k in teacher)
