"""select_images.py as a user runs it: a checkpoint, a small split, the next round's split that
train.py trains on, and one-line errors."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli import ONE_THREAD, REPO, run_script, train_on_toy
from trained import image_tensor

from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
from semiseg.data.change import load_pair, pair_tensor
from semiseg.data.splits import read_list, write_list, write_split
from semiseg.evaluation.inference import predict
from semiseg.selection.uncertainty import entropy_map, margin_map


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


# -- ACDC (cases or slices), change pairs, torchrun ---------------------------------------------

TINY_FORMAT = [
    "dataset.crop_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=1",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def tiny_run(tmp_path_factory, experiment, dataset, split):
    """One training step of a toy experiment: its dataset (generated) and checkpoint."""
    folder = tmp_path_factory.mktemp(dataset)
    proc = run_script(
        "train.py",
        f"experiment={experiment}",
        f"dataset.root={folder / dataset}",
        f"split={split}",
        *TINY_FORMAT,
        f"hydra.run.dir={folder / 'run'}",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / dataset, folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def acdc_run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "supervised_acdc_toy", "acdc_toy", "1")


@pytest.fixture(scope="module")
def cd_run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "supervised_cd_toy", "cd_toy", "20%")


def select_on(root, checkpoint, output, *overrides, launcher=()):
    return subprocess.run(
        [
            *launcher,
            *([] if launcher else [sys.executable]),
            "select_images.py",
            f"ckpt_path={checkpoint}",
            f"dataset.root={root}",
            f"output={output}",
            *overrides,
        ],
        cwd=REPO,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=600,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summary_classes(checkpoint) -> list[str]:
    return load_checkpoint(checkpoint)["semiseg"]["class_names"]


def scores_rows(output):
    with open(output / "scores.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_acdc_chooses_whole_cases_by_their_mean_slice_score(acdc_run, tmp_path):
    root, checkpoint = acdc_run
    by_case = select_on(root, checkpoint, tmp_path / "case", "budget=2", "strategy=entropy")
    assert by_case.returncode == 0, by_case.stderr[-3000:]
    by_slice = select_on(
        root, checkpoint, tmp_path / "slice", "budget=3", "strategy=entropy", "unit=slice"
    )
    assert by_slice.returncode == 0, by_slice.stderr[-3000:]

    old = (root / "splits" / "1" / "labeled.txt").read_text().splitlines()
    pool = (root / "splits" / "1" / "unlabeled.txt").read_text().splitlines()
    cases = scores_rows(tmp_path / "case")
    slices = {r["slice"]: float(r["entropy"]) for r in scores_rows(tmp_path / "slice")}
    assert list(slices) == pool
    # a case's score is the mean of its slices' scores
    for row in cases:
        members = [s for s in pool if Path(s).name.startswith(row["case"] + "_slice_")]
        assert len(members) == 8
        assert float(row["entropy"]) == pytest.approx(
            np.mean([slices[s] for s in members]), abs=2e-6
        )
    chosen = [r["case"] for r in sorted(cases, key=lambda r: r["chosen_rank"] or "9")][:2]
    assert all(r["chosen_rank"] for r in cases if r["case"] in chosen)
    # the two highest mean scores (scores.csv rounds to 6 decimals: ties within that)
    lowest_chosen = min(float(r["entropy"]) for r in cases if r["case"] in chosen)
    assert all(
        float(r["entropy"]) <= lowest_chosen + 1e-6 for r in cases if r["case"] not in chosen
    )
    # every slice of the chosen cases moves; split 3 = 1 + 2 cases, one file per line
    new = (tmp_path / "case" / "3" / "labeled.txt").read_text().splitlines()
    moved = [s for c in chosen for s in pool if Path(s).name.startswith(c + "_slice_")]
    assert new == old + moved
    rest = (tmp_path / "case" / "3" / "unlabeled.txt").read_text().splitlines()
    assert rest == [s for s in pool if s not in moved]
    assert (tmp_path / "case" / "val.txt").read_text() == (root / "splits" / "val.txt").read_text()
    summary = json.loads((tmp_path / "case" / "select.json").read_text())
    assert summary["unit"] == "case" and summary["chosen_units"] == chosen
    # Label Studio: one task per slice of the chosen cases, its PNG, brush regions per class
    studio = tmp_path / "case" / "label_studio"
    tasks = json.loads((studio / "tasks.json").read_text())
    assert [t["data"]["case"] for t in tasks] == [c for c in chosen for _ in range(8)]
    for task, path in zip(tasks, moved, strict=True):
        png = Path(path).name.replace(".h5", ".png")
        assert task["data"]["image"] == f"/data/local-files/?d=images/{png}"
        assert (studio / "images" / png).stat().st_size > 0
        for region in task["predictions"][0]["result"]:
            assert region["type"] == "brushlabels" and region["to_name"] == "image"
            assert region["value"]["brushlabels"][0] in summary_classes(checkpoint)[1:]
    assert "<BrushLabels" in (studio / "config.xml").read_text()
    # unit=slice: the 3 highest slices, in rank order; the split is named by its slice count
    rows = scores_rows(tmp_path / "slice")
    top = [r["slice"] for r in sorted(rows, key=lambda r: r["chosen_rank"] or "9")[:3]]
    lowest_top = min(slices[t] for t in top)
    assert all(v <= lowest_top + 1e-6 for s, v in slices.items() if s not in top)
    written = (tmp_path / "slice" / f"{len(old) + 3}" / "labeled.txt").read_text().splitlines()
    assert written == old + top


@pytest.mark.slow
def test_acdc_split_written_trains(acdc_run, tmp_path):
    root, checkpoint = acdc_run
    out = tmp_path / "next"
    assert select_on(root, checkpoint, out, "budget=1", "strategy=random").returncode == 0
    proc = run_script(
        "train.py",
        "experiment=supervised_acdc_toy",
        f"dataset.root={root}",
        f"dataset.splits_dir={out}",
        "split=2",
        *TINY_FORMAT,
        f"hydra.run.dir={tmp_path / 'r'}",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_change_pairs_are_scored_through_the_siamese_network(cd_run, tmp_path):
    root, checkpoint = cd_run
    out = tmp_path / "next"
    proc = select_on(root, checkpoint, out, "budget=2", "strategy=margin")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = load_checkpoint(checkpoint)
    model = model_from_checkpoint(trained).eval()
    pool = (root / "splits" / "20%" / "unlabeled.txt").read_text().splitlines()
    rows = scores_rows(out)
    assert [r["pair"] for r in rows] == pool
    for row in rows[:3]:  # the margin of the pair's change prediction, both images as one input
        x = pair_tensor(*load_pair(root, row["pair"]))[None]
        probs = predict(model, x, "original", 64, 2)[0]
        expected = float(margin_map(probs).mean())
        assert float(row["margin"]) == pytest.approx(expected, abs=1e-5)
    ranked = sorted(rows, key=lambda r: (-float(r["margin"]), int(r["index"])))[:2]
    old = (root / "splits" / "20%" / "labeled.txt").read_text().splitlines()
    labeled = (out / str(len(old) + 2) / "labeled.txt").read_text().splitlines()
    assert labeled == old + [r["pair"] for r in ranked]
    assert (out / "test.txt").read_text() == (root / "splits" / "test.txt").read_text()
    assert (out / "contact_sheet.png").stat().st_size > 0
    # Label Studio: both images of each chosen pair, the predicted change painted on B
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert [t["data"] for t in tasks] == [
        {"image_a": f"/data/local-files/?d=A/{r['pair']}",
         "image_b": f"/data/local-files/?d=B/{r['pair']}"} for r in ranked
    ]  # fmt: skip
    for task in tasks:
        for region in task["predictions"][0]["result"]:
            assert region["to_name"] == "image_b" and region["value"]["brushlabels"] == ["changed"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["kcenter", "random"])
def test_torchrun_two_processes_write_what_one_process_writes(acdc_run, tmp_path, strategy):
    root, checkpoint = acdc_run
    common = ["budget=3", f"strategy={strategy}", "unit=slice", "device=cpu"]
    one = select_on(root, checkpoint, tmp_path / "one", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
    ]
    two = select_on(root, checkpoint, tmp_path / "two", *common, launcher=torchrun)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("scores.csv", "val.txt", "contact_sheet.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    for split in (tmp_path / "one").glob("*/labeled.txt"):
        other = tmp_path / "two" / split.parent.name
        assert split.read_text() == (other / "labeled.txt").read_text()
        assert (split.parent / "unlabeled.txt").read_text() == (other / "unlabeled.txt").read_text()
    one_summary = json.loads((tmp_path / "one" / "select.json").read_text())
    two_summary = json.loads((tmp_path / "two" / "select.json").read_text())
    assert two_summary["processes"] == 2 and one_summary["processes"] == 1
    assert two_summary["chosen"] == one_summary["chosen"]
    assert two.stdout.count("chose 3 slices") == 1  # rank 0 alone writes and says so
