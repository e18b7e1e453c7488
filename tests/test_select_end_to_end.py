"""select_images.py as a user runs it: a checkpoint, a small split, the next round's split that
train.py trains on, and one-line errors."""

import csv
import json

import numpy as np
import pytest
from cli import ONE_THREAD, run_script, train_on_toy
from trained import image_tensor

from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
from semiseg.data.splits import read_list, write_list, write_split
from semiseg.evaluation.inference import predict
from semiseg.selection.uncertainty import entropy_map


@pytest.fixture(scope="module")
def small_splits(tmp_path_factory, toy_root):
    """Split 4 of the toy: 4 labeled and 8 unlabeled images; 4 validation images."""
    folder = tmp_path_factory.mktemp("splits")
    labeled = read_list(toy_root / "splits" / "20" / "labeled.txt", require_mask=True)[:4]
    unlabeled = read_list(toy_root / "splits" / "20" / "unlabeled.txt", require_mask=False)[:8]
    write_split(folder, "4", labeled, unlabeled)
    val = read_list(toy_root / "splits" / "val.txt", require_mask=True)[:4]
    write_list(folder / "val.txt", val)
    return folder


def select(checkpoint, toy_root, splits, output, *overrides):
    return run_script(
        "select_images.py",
        f"ckpt_path={checkpoint}",
        f"dataset.root={toy_root}",
        f"dataset.splits_dir={splits}",
        "split=4",
        f"output={output}",
        *overrides,
        env=ONE_THREAD,
    )


def mean_entropy(model, path):
    probs = predict(model, image_tensor(path), "original", 64, model.classifier.out_channels)
    return float(entropy_map(probs[0]).mean())


@pytest.mark.slow  # about 45 s on a busy 2-core CPU
def test_entropy_chooses_the_most_uncertain_images(
    varied_checkpoint, toy_root, small_splits, tmp_path
):
    out = tmp_path / "next"
    proc = select(varied_checkpoint, toy_root, small_splits, out, "budget=3", "strategy=entropy")
    assert proc.returncode == 0, proc.stderr[-3000:]

    pool = read_list(small_splits / "4" / "unlabeled.txt", require_mask=False)
    model = model_from_checkpoint(load_checkpoint(varied_checkpoint)).eval()
    entropy = np.array([mean_entropy(model, toy_root / s.image) for s in pool])
    expected = [pool[i] for i in np.argsort(-entropy, kind="stable")[:3]]
    assert len(set(np.round(entropy, 4))) == len(pool)  # distinct: the order means something

    old_labeled = read_list(small_splits / "4" / "labeled.txt", require_mask=True)
    assert read_list(out / "7" / "labeled.txt", require_mask=True) == old_labeled + expected
    rest = [s for s in pool if s not in expected]
    assert read_list(out / "7" / "unlabeled.txt", require_mask=False) == rest
    assert (out / "val.txt").read_text() == (small_splits / "val.txt").read_text()
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [s.image for s in pool]
    assert np.allclose([float(r["entropy"]) for r in rows], entropy, atol=1e-4)
    summary = json.loads((out / "select.json").read_text())
    assert summary["new_split"] == "7" and summary["masks_to_draw"] == []
    assert f"dataset.splits_dir={out.resolve()} split=7" in summary["train"]
    assert (out / "contact_sheet.png").stat().st_size > 0
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [
        f"/data/local-files/?d={s.image}" for s in expected
    ]
    assert all(t["predictions"][0]["result"] for t in tasks)  # the varied model predicts objects


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["budget=9"], "error: budget=9 is more than the 8 unlabeled images of the split"),
        (
            ["budget=2", "strategy=disagreement"],
            "error: strategy=disagreement: method supervised has one prediction of an image only",
        ),
    ],
)
def test_bad_budget_or_strategy_is_one_line(
    varied_checkpoint, toy_root, small_splits, tmp_path, overrides, message
):
    proc = select(varied_checkpoint, toy_root, small_splits, tmp_path / "next", *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
    assert not (tmp_path / "next").exists()


def test_missing_checkpoint_is_one_line(toy_root, small_splits, tmp_path):
    proc = select(tmp_path / "none.ckpt", toy_root, small_splits, tmp_path / "next", "budget=2")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: ckpt_path {tmp_path / 'none.ckpt'} does not exist: give a .ckpt written by train.py"
        " (or a released best.pth of the public code, with model=... dataset=...)"
    )


@pytest.mark.slow
def test_unimatch_disagreement_then_train_on_the_new_split(toy_root, small_splits, tmp_path):
    """The loop's round: train UniMatch, choose by its two streams' disagreement, train on the
    split written."""
    run = tmp_path / "run"
    train_on_toy(toy_root, f"dataset.splits_dir={small_splits}", "split=4", f"hydra.run.dir={run}")
    out = tmp_path / "next"
    checkpoint = run / "checkpoints" / "last.ckpt"
    proc = select(checkpoint, toy_root, small_splits, out, "budget=2", "strategy=disagreement")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "select.json").read_text())
    assert summary["disagreement"] == "clean against feature-perturbed stream"
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    ranked = sorted(range(8), key=lambda i: (-float(rows[i]["disagreement"]), i))[:2]
    chosen = {int(r["index"]): int(r["chosen_rank"]) for r in rows if r["chosen_rank"]}
    assert chosen == {ranked[0]: 1, ranked[1]: 2}

    second = tmp_path / "run2"
    proc = train_on_toy(toy_root, f"dataset.splits_dir={out}", "split=6", f"hydra.run.dir={second}")
    results = json.loads((second / "results.json").read_text())
    assert str(results["split"]) == "6" and results["steps"] == 3
    trained = load_checkpoint(second / "checkpoints" / "last.ckpt")["semiseg"]["config"]
    assert trained["data"]["splits_dir"] == str(out)
