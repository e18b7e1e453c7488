"""train.py on fixtures in the WHU-CD and LEVIR-CD layouts: every method trains two steps on
image pairs and validates on test.txt with the changed-class scores; eval.py scores the
checkpoint the same way."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import layouts  # noqa: E402
from cli import ONE_THREAD, TWO_STEPS, run_script  # noqa: E402

CD_TINY = [
    "model.encoder=resnet18",
    "model.pretrained=scratch",
    *TWO_STEPS,
]
SCORES = {"iou_changed", "f1", "precision", "recall", "overall_accuracy", "iou_unchanged"}


@pytest.fixture(scope="module")
def whu(tmp_path_factory):
    return layouts.change_detection(tmp_path_factory.mktemp("whu") / "WHU-CD-256", "whu")


@pytest.fixture(scope="module")
def levir(tmp_path_factory):
    return layouts.change_detection(tmp_path_factory.mktemp("levir") / "LEVIR-CD256", "levir")


def train(root, run_dir, *overrides):
    run = run_script(
        "train.py", f"dataset.root={root}", *overrides, *CD_TINY,
        f"hydra.run.dir={run_dir}", env=ONE_THREAD,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def check_change_results(results):
    assert results["steps"] == 2 and results["selection"] == "iou_changed"
    assert set(results["change_scores"]) == SCORES
    assert results["val_iou_changed"] == results["change_scores"]["iou_changed"]
    assert results["best_val_iou_changed"] >= results["val_iou_changed"]
    assert results["best_change_scores"]["step"] == 2
    assert all(0.0 <= v <= 100.0 for v in results["change_scores"].values())
    assert set(results["per_class_iou"]) == {"unchanged", "changed"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout, experiment",
    [("whu", "unimatch_whu_cd"), ("whu", "supervised_whu_cd"), ("levir", "unimatch_levir_cd")],
)
def test_public_experiments_train_and_eval_scores_the_same(
    layout, experiment, whu, levir, tmp_path
):
    root = whu if layout == "whu" else levir
    results = train(root, tmp_path, f"experiment={experiment}", "split=5%")
    check_change_results(results)
    evaluate_like_training(tmp_path, results)


def evaluate_like_training(run_dir, results):
    """eval.py on the last checkpoint: the network training validated, the same scores."""
    evaluated = run_script(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={run_dir / 'eval'}",
        "save_predictions=true",
        "device=cpu",
        env=ONE_THREAD,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scored = json.loads((run_dir / "eval" / "results.json").read_text())
    # the last validation ran on the last step's weights: the same pairs, the same scores
    assert scored["change_scores"] == results["change_scores"]
    assert scored["eval_network"] == results["eval_network"] and scored["num_images"] == 2
    assert len(list((run_dir / "eval" / "predictions").glob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, extra",
    [
        ("fixmatch", []),
        ("unimatch", ["method.strong_views=step"]),
        ("meanteacher", []),
        ("imas", []),
        ("augseg", []),
        ("fst", []),
        ("css", []),
    ],
)
def test_every_method_trains_on_pairs(method, extra, whu, tmp_path):
    results = train(
        whu, tmp_path, "dataset=whu_cd", "model=siamese_deeplabv3plus", f"method={method}",
        "split=20%", *extra,
    )  # fmt: skip
    check_change_results(results)
    evaluate_like_training(tmp_path, results)


@pytest.mark.slow
def test_single_image_model_is_refused_in_one_line(whu, tmp_path):
    run = run_script(
        "train.py", "dataset=whu_cd", f"dataset.root={whu}", "split=5%", *CD_TINY,
        f"hydra.run.dir={tmp_path}", env=ONE_THREAD,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: dataset=whu_cd gives image pairs (A and B, 6 channels) and model DeepLabV3Plus "
        "takes RGB images: use model=siamese_deeplabv3plus (or experiment=unimatch_whu_cd)"
    )
