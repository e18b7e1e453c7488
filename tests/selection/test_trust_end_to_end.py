"""Pseudo-label trust through train.py and eval.py on ACDC volumes and change pairs: UniMatch
trains two steps on each fixture; its validation logs trust/* per class into the CSV metrics,
and eval.py writes pseudo_label_trust and reliability.png for the same classes."""

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
import layouts  # noqa: E402
from cli import ONE_THREAD, TWO_STEPS, run_script  # noqa: E402

TINY = [*TWO_STEPS, "logger=csv"]
KINDS = {
    "acdc": (
        layouts.acdc,
        "ACDC",
        ["experiment=unimatch_acdc", "split=1"],
        ["background", "right_ventricle", "myocardium", "left_ventricle"],
    ),
    "change": (
        lambda root: layouts.change_detection(root, "whu"),
        "WHU-CD-256",
        ["experiment=unimatch_whu_cd", "split=5%", "model.encoder=resnet18"],
        ["unchanged", "changed"],
    ),
}


@pytest.mark.slow  # a training run and an evaluation per kind
@pytest.mark.parametrize("kind", KINDS)
def test_training_logs_and_eval_writes_trust_per_class(kind, tmp_path):
    make_root, folder, overrides, classes = KINDS[kind]
    root = make_root(tmp_path / folder)
    run = tmp_path / "run"
    trained = run_script(
        "train.py", f"dataset.root={root}", *overrides, "model.pretrained=scratch", *TINY,
        f"hydra.run.dir={run}", env=ONE_THREAD,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("trust/ece")]
    assert len(rows) == 1 and float(rows[0]["trust/tau"]) == pytest.approx(0.95)
    for name in classes:
        for key in (f"trust/precision_{name}", f"trust/coverage_{name}"):
            value = rows[0][key]  # NaN where nothing was pseudo-labeled that class
            assert value == "nan" or 0.0 <= float(value) <= 100.0, (key, value)
    assert 0.0 <= float(rows[0]["trust/ece"]) <= 100.0

    evaluated = run_script(
        "eval.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={run / 'eval'}", "device=cpu", env=ONE_THREAD,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "pseudo-labels at tau 0.95" in evaluated.stdout
    trusted = json.loads((run / "eval" / "results.json").read_text())["pseudo_label_trust"]
    assert list(trusted["precision"]) == classes and list(trusted["coverage"]) == classes
    assert trusted["tau"] == 0.95 and 0.0 <= trusted["ece"] <= 100.0
    assert sum(b["count"] for b in trusted["reliability"]) > 0
    assert (run / "eval" / "reliability.png").stat().st_size > 0
    # eval.py counts the network validation counted, on the same items: the same coverage
    for name in classes:
        logged = float(rows[0][f"trust/coverage_{name}"])
        written = trusted["coverage"][name]
        assert (written is None and logged != logged) or written == pytest.approx(logged, abs=0.01)
