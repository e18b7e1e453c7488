"""Each benchmark layout, built tiny on disk, prepared, trained and evaluated through the
command line: python -m semiseg.data.prepare.*, train.py (which validates), eval.py."""

import json
import subprocess
import sys

import layouts
import numpy as np
import pytest
from cli import REPO, TINY, run_eval, run_script
from PIL import Image

# name -> (builder, root folder name, split, prepare module, method, eval mode, classes)
CASES = {
    "pascal": (layouts.pascal, "VOC2012", "1/16", None, "supervised", "original", 21),
    "cityscapes": (
        layouts.cityscapes,
        "cityscapes",
        "1/30",
        "cityscapes",
        "supervised",
        "sliding_window",
        19,
    ),
    "coco": (layouts.coco, "coco", "1/512", "coco", "supervised", "original", 81),
    "ade20k": (
        layouts.ade20k,
        "ADEChallengeData2016",
        "1/64",
        "ade20k",
        "fixmatch",
        "original",
        150,
    ),
    "custom": (layouts.custom_folders, "plants", None, None, "supervised", "original", 3),
}
# eval.py as well (train.py validates every layout, in the dataset's eval mode): the label map
# and a generated val list go through eval.py's own loading path
EVAL_PY = {"ade20k", "custom"}


def prepare(module: str, root):
    proc = subprocess.run(
        [sys.executable, "-m", f"semiseg.data.prepare.{module}", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    return proc.stdout


# The pascal, cityscapes, coco and ade20k cases are slow (a train.py process each, 15-40 s on 2
# busy cores): their loading is covered in process by tests/data/ and every layout trains every
# method in test_methods_on_layouts.py (slow); custom stays fast (a prepare, train.py and eval.py:
# a generated split and eval.py's own loading path).
SLOW_CASES = {"pascal", "cityscapes", "coco", "ade20k"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES]
)
def test_layout_prepares_trains_and_evaluates(tmp_path, name):
    build, folder, split, module, method, mode, classes = CASES[name]
    if name == "coco":
        pytest.importorskip("pycocotools")
    root = build(tmp_path / folder)
    if module:
        prepare(module, root)
    run_dir = tmp_path / "run"
    # the paper recipes validate once per epoch: count validation steps across epochs instead
    overrides = [f"dataset={name}", f"dataset.root={root}", f"method={method}", *TINY]
    overrides.append("trainer.check_val_every_n_epoch=null")
    if split:
        overrides.append(f"split={split}")
    proc = run_script("train.py", *overrides, "logger=none", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    if name == "custom":  # a plain images/ + masks/ pair: the split is generated, and said so
        assert "split 1/8: generated 2 labeled + 9 unlabeled images" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == name and results["steps"] == 3
    assert results["eval_mode"] == mode and len(results["per_class_iou"]) == classes
    assert "absent" in results["miou_convention"]
    assert 0.0 <= results["val_miou"] <= 100.0

    if name not in EVAL_PY:
        return
    eval_dir = tmp_path / "eval"
    # custom: the other mIoU convention; its val image holds every class, so the value is the
    # same, and results.json says which convention it used
    convention = ["eval.absent_class=skip"] if name == "custom" else []
    proc = run_eval(run_dir, eval_dir, *convention)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((eval_dir / "results.json").read_text())
    assert evaluated["num_images"] == (1 if name == "custom" else 2)
    assert evaluated["eval_mode"] == mode
    assert evaluated["val_miou"] == pytest.approx(results["val_miou"], abs=0.01)
    assert (evaluated["miou_convention"] == results["miou_convention"]) == (not convention)
    for prediction in (eval_dir / "predictions").glob("*.png"):
        assert np.asarray(Image.open(prediction)).max() < classes


def test_bad_mask_value_stops_train_py_before_training(tmp_path):
    root = layouts.pascal(tmp_path / "VOC2012")
    bad = root / "SegmentationClassAug" / "2007_000001.png"
    values = np.asarray(Image.open(bad)).copy()
    values[3, 3] = 77
    Image.fromarray(values).save(bad)
    proc = run_script(
        "train.py",
        "dataset=pascal",
        f"dataset.root={root}",
        "split=1/16",
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: mask {bad} holds value 77, which is neither a class (0..20) nor 255 (ignore); "
        "fix the mask, the class list or dataset.label_map"
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # a train.py process; the message is held in process by test_split_names.py
# and train.py's one-line split error by test_end_to_end.py's unknown split
def test_hydra_underscore_split_is_explained_by_train_py(tmp_path):
    root = layouts.pascal(tmp_path / "VOC2012")
    proc = run_script(
        "train.py",
        "dataset=pascal",
        f"dataset.root={root}",
        "split=1_16",
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: unknown split '116' for pascal")
    assert "write split=1/16" in message


@pytest.mark.slow  # train.py and eval.py with sliding windows; the subsets are computed in
# process by tests/data/test_domain_adaptation.py
def test_synthia_to_cityscapes_reports_the_16_and_13_class_means(tmp_path):
    """SYNTHIA as downloaded (16-bit labels, no conversion) as the labeled source, the Cityscapes
    layout as target: results.json and eval.py give mIoU16 and mIoU13 beside the 19-class mIoU."""
    source = layouts.synthia(tmp_path / "synthia")
    target = layouts.cityscapes(tmp_path / "cityscapes")
    prepare("cityscapes", target)
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        "dataset=cityscapes",
        f"dataset.root={target}",
        "split=1/30",
        "source=synthia",
        f"source.root={source}",
        "method=supervised",  # the source-only baseline
        *TINY,
        "trainer.check_val_every_n_epoch=null",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "cityscapes" and results["source"] == "synthia"
    assert len(results["per_class_iou"]) == 19 and results["eval_mode"] == "sliding_window"
    subsets = results["miou_subsets"]
    assert set(subsets) == {"miou16", "miou13"}
    per_class = {k: v or 0.0 for k, v in results["per_class_iou"].items()}
    missing = ("terrain", "truck", "train")
    assert subsets["miou16"] == pytest.approx(
        sum(v for k, v in per_class.items() if k not in missing) / 16, abs=0.01
    )
    proc = run_eval(run_dir, tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["miou_subsets"] == pytest.approx(subsets, abs=0.01)
