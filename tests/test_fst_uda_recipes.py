"""experiment=fst_gta_cityscapes, fst_synthia_cityscapes and fst_gta_cityscapes_deeplabv2: the
values of the public configs (usr922/FST configs/fst_d/*_mitb5_*, *_r101_*, _base_/datasets/
uda_*_512x512.py) as composed; end to end on the tiny GTA5, SYNTHIA and Cityscapes layouts
(tests/layouts.py): train.py with FST-D's UDA step, the networks, the data pipelines,
rare-class sampling, AdamW and the warm-up, then results.json; the warm-up against mmcv's formula."""

import json
import subprocess
import sys

import layouts
import pytest
from cli import REPO, TINY, run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

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


def composed(experiment: str):
    import semiseg.data  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}"])


# The public values: configs/fst_d/gta2cs_..._mitb5_s0_step3.py (and _r101_), their _base_ files
# (daformer_sepaspp_mitb5.py, deeplabv2red_r101-d8.py, adamw.py, poly10warm.py) and
# uda_{gta,synthia}_to_cityscapes_512x512.py.
PUBLIC = {
    "fst_gta_cityscapes": ("semiseg.models.segformer.DAFormer", "mit_b5", "gta5", [1280, 720]),
    "fst_synthia_cityscapes": (
        "semiseg.models.segformer.DAFormer", "mit_b5", "synthia", [1280, 760],
    ),
    "fst_gta_cityscapes_deeplabv2": (
        "semiseg.models.deeplabv2.DeepLabV2", "resnet101_v1c", "gta5", [1280, 720],
    ),
}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(PUBLIC))
def test_uda_recipes_hold_the_public_values(experiment):
    cfg = composed(experiment)
    target, encoder, source, source_resize = PUBLIC[experiment]
    assert (cfg.model._target_, cfg.model.encoder, cfg.source.name) == (target, encoder, source)
    assert cfg.model.pretrained == "imagenet" and cfg.dataset.name == "cityscapes"
    if encoder == "mit_b5":  # DAFormer head: embed 256, separable ASPP 1/6/12/18, dropout 0.1
        assert (cfg.model.embed_dim, cfg.model.channels, cfg.model.dropout) == (256, 256, 0.1)
        assert list(cfg.model.dilations) == [1, 6, 12, 18] and cfg.model.drop_path_rate == 0.1
    else:  # deeplabv2red: the rates 6 and 12
        assert list(cfg.model.dilations) == [6, 12]
    assert OmegaConf.to_container(cfg.data.uda_pipeline) == {
        "source_resize": source_resize, "target_resize": [1024, 512], "cat_max_ratio": 0.75,
    }  # fmt: skip
    assert cfg.dataset.crop_size == 512 and cfg.data.batch_size == 2
    assert cfg.eval.mode == "resize" and list(cfg.eval.resize) == [1024, 512]
    assert dict(cfg.data.rare_class_sampling) == {
        "temperature": 0.01, "min_pixels": 3000, "min_crop_ratio": 0.5,
    }  # fmt: skip
    optim = cfg.optim
    assert (optim.name, optim.lr, optim.lr_multi, optim.weight_decay) == ("adamw", 6e-5, 10, 0.01)
    assert list(optim.betas) == [0.9, 0.999] and optim.poly_power == 1.0
    assert (optim.warmup_iters, optim.warmup_ratio, optim.reference_batch) == (1500, 1e-6, 2)
    assert cfg.trainer.max_steps == 40_000 and cfg.trainer.val_check_interval == 2000
    method = cfg.method
    assert (method.name, method.variant, method.k, method.ema_alpha) == ("fst_uda", "D", 3, 0.999)
    assert method.pseudo_threshold == 0.968 and list(method.pseudo_crop) == [15, 120]
    assert method.fdist_lambda == 0.005 and method.fdist_min_ratio == 0.75
    assert list(method.fdist_classes) == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    assert cfg.dataset.labeled_loss.name == "ce"


# Tiny networks and sizes for the fixtures (images of 64 x 36 / 80 x 48).
TINY_UDA = [
    "data.uda_pipeline.source_resize=[96,54]",
    "data.uda_pipeline.target_resize=[128,64]",
    "eval.resize=[128,64]",
]
TINY_NETWORKS = {
    "daformer": ["model.encoder=mit_b0", "model.embed_dim=16", "model.channels=16"],
    "deeplabv2": ["model.encoder=resnet50_v1c"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, experiment",
    [("gta", "fst_gta_cityscapes"), ("synthia", "fst_synthia_cityscapes"),
     ("gta", "fst_gta_cityscapes_deeplabv2")],
)  # fmt: skip
def test_uda_recipe_runs_end_to_end_on_the_fixtures(tmp_path, source, experiment):
    build = {"gta": layouts.gta5, "synthia": layouts.synthia}[source]
    network = "deeplabv2" if experiment.endswith("deeplabv2") else "daformer"
    source_root = build(tmp_path / source)
    target = layouts.cityscapes(tmp_path / "cityscapes")
    subprocess.run(
        [sys.executable, "-m", "semiseg.data.prepare.cityscapes", str(target)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        f"experiment={experiment}",
        f"dataset.root={target}",
        "split=1/30",
        f"source.root={source_root}",
        *TINY,
        *TINY_NETWORKS[network],
        *TINY_UDA,
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
