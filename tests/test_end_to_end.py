"""train.py then eval.py through the command line, on tiny settings."""

import csv
import json

import numpy as np
import pytest
import torch
from cli import TINY, run_eval, run_script
from PIL import Image

from semiseg.data import palettes
from semiseg.data.splits import read_list

RESULT_KEYS = {
    "method",
    "dataset",
    "split",
    "seed",
    "steps",
    "val_miou",
    "best_val_miou",
    "per_class_iou",
    "wall_time_s",
}


def train(tmp_path, toy_root, name, *overrides, env=None):
    run_dir = tmp_path / name
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *TINY,
        f"hydra.run.dir={run_dir}",
        *overrides,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory, toy_root):
    tmp = tmp_path_factory.mktemp("runs")
    return train(
        tmp,
        toy_root,
        "supervised",
        "method=supervised",
        "logger=wandb",
        env={"WANDB_MODE": "offline"},
    )


def test_train_writes_results_and_checkpoints(supervised_run, toy_root):
    run_dir, proc = supervised_run
    results = json.loads((run_dir / "results.json").read_text())
    assert RESULT_KEYS <= results.keys()
    assert results["method"] == "supervised" and results["dataset"] == "toy"
    assert results["split"] == "20" and results["steps"] == 3
    assert 0.0 <= results["val_miou"] <= 100.0
    assert results["best_val_miou"] >= results["val_miou"]
    class_names = (toy_root / "classes.txt").read_text().split()
    assert list(results["per_class_iou"]) == class_names
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert "val mIoU" in proc.stdout


def test_wandb_logger_runs_offline(supervised_run):
    run_dir, _ = supervised_run
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert any(offline_runs[0].rglob("*.wandb"))


def test_eval_matches_training_and_saves_predictions(supervised_run, toy_root, tmp_path):
    run_dir, _ = supervised_run
    trained = json.loads((run_dir / "results.json").read_text())
    eval_dir = tmp_path / "eval"
    proc = run_eval(run_dir, eval_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((eval_dir / "results.json").read_text())
    # Same checkpoint, same images, same mode: the same number as the last validation.
    assert results["val_miou"] == pytest.approx(trained["val_miou"], abs=0.01)
    assert "mIoU" in proc.stdout and "background" in proc.stdout

    val = read_list(toy_root / "splits" / "val.txt", require_mask=True)
    predictions = sorted((eval_dir / "predictions").glob("*.png"))
    assert len(predictions) == len(val)
    for sample in val[:5]:
        image = Image.open(toy_root / sample.image)
        pred = Image.open(
            eval_dir / "predictions" / (sample.image.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png")
        )
        assert pred.mode == "P" and pred.size == image.size  # class indices, toy's palette
        assert np.array(pred).max() < len(results["per_class_iou"])
        embedded = np.array(pred.getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(embedded[:5], palettes.generated()[:5])

    check_scores_and_confusion(eval_dir, results, toy_root)


def check_scores_and_confusion(eval_dir, results, toy_root):
    class_names = (toy_root / "classes.txt").read_text().split()
    for name in ("dice", "precision", "recall"):
        assert list(results[f"per_class_{name}"]) == class_names
        assert 0.0 <= results[f"mean_{name}"] <= 100.0
    assert 0.0 <= results["pixel_accuracy"] <= 100.0 and -1.0 <= results["cohen_kappa"] <= 1.0
    with open(eval_dir / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["gt \\ pred", *class_names]
    assert [r[0] for r in rows[1:]] == class_names
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    # the CSV's diagonal over its total is the accuracy results.json reports
    assert 100.0 * np.trace(counts) / counts.sum() == pytest.approx(
        results["pixel_accuracy"], abs=0.01
    )
    inter = np.diag(counts)
    iou = inter / np.maximum(counts.sum(0) + counts.sum(1) - inter, 1)
    assert 100.0 * iou.mean() == pytest.approx(results["val_miou"], abs=0.01)
    assert Image.open(eval_dir / "confusion_matrix.png").size[0] > 100


def test_predictions_of_images_with_the_same_name_keep_apart(supervised_run, toy_root, tmp_path):
    run_dir, _ = supervised_run
    val = read_list(toy_root / "splits" / "val.txt", require_mask=True)
    root = tmp_path / "root"
    lines = []
    for folder, sample in zip(("city_a", "city_b"), val[:2], strict=True):
        (root / folder).mkdir(parents=True)
        (root / folder / "x.png").write_bytes((toy_root / sample.image).read_bytes())
        (root / folder / "x_mask.png").write_bytes((toy_root / sample.mask).read_bytes())
        lines.append(f"{folder}/x.png {folder}/x_mask.png\n")
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("".join(lines))
    eval_dir = tmp_path / "eval"
    proc = run_eval(run_dir, eval_dir, f"dataset.root={root}")  # splits_dir moves with it
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred_dir = eval_dir / "predictions"
    predictions = sorted(p.relative_to(pred_dir) for p in pred_dir.rglob("*.png"))
    assert [p.as_posix() for p in predictions] == ["city_a/x.png", "city_b/x.png"]
    for folder, sample in zip(("city_a", "city_b"), val[:2], strict=True):
        pred = Image.open(eval_dir / "predictions" / folder / "x.png")
        assert pred.size == Image.open(toy_root / sample.image).size


@pytest.mark.parametrize(
    "method, terms",
    [
        # slow: the same logging path as unimatch's, a train.py process (15-30 s on 2 busy
        # cores); FixMatch's step itself is held in process by test_weak_to_strong_steps.py
        pytest.param(
            "fixmatch", ["loss_x", "loss_s", "mask_ratio", "pseudo_acc"], marks=pytest.mark.slow
        ),
        pytest.param(
            "unimatch",
            ["loss_x", "loss_s1", "loss_s2", "loss_fp", "mask_ratio", "pseudo_acc"],
            marks=pytest.mark.slow,  # about 35 s; UniMatch's step is held in process by
        ),  # tests/methods/test_weak_to_strong_steps.py
    ],
)
def test_semi_supervised_methods_train_and_log_every_term(tmp_path, toy_root, method, terms):
    run_dir, _ = train(
        tmp_path, toy_root, method, f"method={method}", "trainer.log_every_n_steps=1"
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == method and results["steps"] == 3
    with open(run_dir / "csv" / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    expected = {f"train/{t}" for t in ["loss", *terms, "lr_backbone", "lr_head"]}
    assert expected <= columns, expected - columns


@pytest.mark.slow  # a train.py run of its own (about 40 s on 2 cores)
def test_final_weights_are_validated_when_steps_do_not_divide(tmp_path, toy_root):
    run_dir, _ = train(
        tmp_path, toy_root, "odd", "method=supervised", "trainer.max_steps=4", "logger=none"
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert [h["step"] for h in results["val_history"]] == [3, 4]
    assert results["steps"] == 4
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4
    assert last["semiseg"]["val_history"][-1]["step"] == 4


def test_unknown_split_fails_before_training_with_valid_list(tmp_path, toy_root):
    proc = run_script(
        "train.py", f"dataset.root={toy_root}", *TINY, "split=seven", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    # (a count or fraction would be generated for toy: a name that is neither is unknown)
    assert "unknown split 'seven'" in message and "10, 20, 40" in message
    assert not (tmp_path / "checkpoints").exists()


def test_bf16_channels_last_and_clipping_train(tmp_path, toy_root):
    run_dir, _ = train(
        tmp_path,
        toy_root,
        "fast",
        "method=fixmatch",
        "trainer.precision=bf16-mixed",
        "trainer.channels_last=true",
        "optim.clip_grad=1.0",
        "logger=none",
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 3 and results["precision"] == "bf16-mixed"
    assert 0.0 <= results["val_miou"] <= 100.0
    # NHWC reached the trained network: its 3x3 convolutions are stored channels_last (the
    # clipping itself is observed in tests/methods/test_clipping.py: the clipped norm)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    kernels = [v for v in state.values() if v.dim() == 4 and v.shape[-1] == 3 and v.shape[1] > 1]
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
    assert not any(k.is_contiguous() for k in kernels)
