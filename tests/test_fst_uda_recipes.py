"""experiment=fst_gta_cityscapes and fst_synthia_cityscapes end to end on the tiny GTA5, SYNTHIA
and Cityscapes layouts (tests/layouts.py): train.py with FST-D's UDA step, rare-class sampling,
AdamW and the warm-up, then results.json; and the warm-up against mmcv's formula."""

import json
import subprocess
import sys

import layouts
import pytest
from cli import REPO, TINY, run_script

from semiseg.methods.base import SemiSegModule


def public_warmup_lr(regular_lr, cur_iters, warmup_iters, warmup_ratio):
    """mmcv LrUpdaterHook.get_warmup_lr, warmup='linear'."""
    k = (1 - cur_iters / warmup_iters) * (1 - warmup_ratio)
    return [_lr * (1 - k) for _lr in regular_lr]


@pytest.mark.parametrize("step", [0, 1, 700, 1499, 1500, 3000])
def test_warmup_factor_is_mmcv_linear_warmup(step):
    module = SemiSegModule.__new__(SemiSegModule)
    module.optim_cfg = {"warmup_iters": 1500, "warmup_ratio": 1e-6}
    expected = public_warmup_lr([1.0], step, 1500, 1e-6)[0] if step < 1500 else 1.0
    assert module.warmup_factor(step) == pytest.approx(expected, rel=1e-12)
    module.optim_cfg = {"warmup_iters": 0}
    assert module.warmup_factor(step) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("source", ["gta", "synthia"])
def test_uda_recipe_runs_end_to_end_on_the_fixtures(tmp_path, source):
    build = {"gta": layouts.gta5, "synthia": layouts.synthia}[source]
    source_root = build(tmp_path / source)
    target = layouts.cityscapes(tmp_path / "cityscapes")
    subprocess.run(
        [sys.executable, "-m", "semiseg.data.prepare.cityscapes", str(target)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        f"experiment=fst_{source}_cityscapes",
        f"dataset.root={target}",
        "split=1/30",
        f"source.root={source_root}",
        *TINY,
        "data.rare_class_sampling.min_pixels=10",  # the fixtures' images are 64 x 36 / 80 x 48
        "trainer.check_val_every_n_epoch=null",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "fst_uda" and results["dataset"] == "cityscapes"
    assert (source_root / "rare_class_pixels.json").is_file()


@pytest.mark.slow
def test_fst_uda_toy_runs_fst_w_end_to_end(tmp_path, toy_root):
    """experiment=fst_uda_toy with FST-W (K = 1: the loaders draw 2 x the batch): the toy as the
    labeled source, toy_shifted (generated into tmp) as target and validation."""
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        "experiment=fst_uda_toy",
        f"source.root={toy_root}",
        f"dataset.root={tmp_path / 'toy_shifted'}",
        *TINY,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "method.variant=W",
        "method.k=1",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "fst_uda" and results["dataset"] == "toy_shifted"
    assert results["source"] == "toy"
