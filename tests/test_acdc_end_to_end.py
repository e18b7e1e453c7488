"""train.py on a fixture in the ACDC layout: supervised and UniMatch train two steps and
validate per volume; results.json holds the per-class and per-volume Dice; eval.py scores the
checkpoint the same way."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import layouts  # noqa: E402
from cli import ONE_THREAD, TWO_STEPS, run_script  # noqa: E402

ACDC_TINY = TWO_STEPS


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return layouts.acdc(tmp_path_factory.mktemp("acdc") / "ACDC")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "unimatch"])
def test_trains_and_reports_dice_per_volume(acdc_root, tmp_path, method):
    run = run_script(
        "train.py",
        f"experiment={method}_acdc",
        f"dataset.root={acdc_root}",
        "split=1",
        *ACDC_TINY,
        f"hydra.run.dir={tmp_path}",
        env=ONE_THREAD,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 2 and results["eval_mode"] == "volume"
    assert results["selection"] == "mean_dice"
    assert set(results["per_class_dice"]) == {"right_ventricle", "myocardium", "left_ventricle"}
    volumes = results["per_volume_dice"]
    assert set(volumes) == {"patient090_frame01", "patient091_frame01"}
    for scores in volumes.values():
        assert all(v is None or 0.0 <= v <= 100.0 for v in scores.values())
    history = results["val_history"][-1]
    assert history["step"] == 2 and history["mean_dice"] == results["val_mean_dice"]
    assert results["best_val_mean_dice"] >= results["val_mean_dice"]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    if method != "unimatch":
        return
    evaluated = run_script(
        "eval.py",
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        "save_predictions=true",
        "device=cpu",
        env=ONE_THREAD,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scored = json.loads((tmp_path / "eval" / "results.json").read_text())
    # the last validation ran on the last step's weights: the same volumes, the same scores
    assert scored["per_volume_dice"] == volumes and scored["mean_dice"] == results["val_mean_dice"]
    assert scored["per_class_dice"] == results["per_class_dice"]
    assert (tmp_path / "eval" / "predictions" / "patient091_frame01.h5").is_file()
