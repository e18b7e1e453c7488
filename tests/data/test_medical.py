"""The ACDC layout (data/medical.py): HDF5 lists, the medical augmentation, whole volumes, the
generated toy ACDC, and the errors of a bad layout or model."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from semiseg.data import acdc_toy
from semiseg.data.datamodule import SemiSegDataModule
from semiseg.data.splits import SplitError
from semiseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parents[1]))
import layouts  # noqa: E402
from cli import REPO  # noqa: E402
from trainers import quiet_trainer

ACDC = {"name": "acdc", "format": "h5", "augment": "medical", "classes": ["bg", "rv", "myo", "lv"]}


def _datamodule(root, split="1", unlabeled=True, dataset_keys=None, **kwargs):
    return SemiSegDataModule(
        root=str(root),
        splits_dir=str(root / "splits"),
        split=split,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        unlabeled=unlabeled,
        dataset=dict(ACDC, root=str(root), splits_dir=str(root / "splits"), **(dataset_keys or {})),
        **kwargs,
    )


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return layouts.acdc(tmp_path_factory.mktemp("acdc") / "ACDC")


def test_streams_keep_image_and_label_aligned(acdc_root):
    dm = _datamodule(acdc_root)
    dm.setup("fit")
    # split 1: one labeled case (3 slices), repeated to the unlabeled length (3 cases x 3)
    assert len(dm.labeled_set) == len(dm.unlabeled_set) == 9
    for i in range(6):  # rotations, flips and the nearest resize move image and label together
        item = dm.labeled_set[i]
        assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (32, 32)
        assert torch.allclose(item["image"][0], item["mask"].float() / 3)
    u = dm.unlabeled_set[0]
    assert {"weak", "strong1", "strong2", "box1", "box2", "ignore", "gt"} <= set(u)
    assert {"mix_weak", "mix_strong1", "mix_strong2", "mix_ignore"} <= set(u)
    assert u["weak"].shape == u["strong1"].shape == (1, 32, 32)
    # the weak view is the 8-bit slice: label / 3 within one grey level
    assert (u["weak"][0] - u["gt"].float() / 3).abs().max() <= 1 / 255 + 1e-6
    assert int(u["ignore"].sum()) == 0
    v = dm.val_set[1]
    assert v["image"].shape == v["mask"].shape == (4, 36, 44)
    assert v["name"] == "patient091_frame01" and 1 not in v["mask"].unique().tolist()


def test_supervised_needs_no_unlabeled_list(acdc_root):
    dm = _datamodule(acdc_root, split="3", unlabeled=False)
    dm.setup("fit")
    assert dm.unlabeled_set is None and len(dm.labeled_set) == 9


def test_layout_errors(tmp_path):
    root = layouts.acdc(tmp_path / "ACDC")
    (root / "splits" / "1" / "labeled.txt").write_text("a.h5 b.png\n")
    with pytest.raises(SplitError, match="one HDF5 file per line"):
        _datamodule(root).setup("fit")
    (root / "splits" / "1" / "labeled.txt").write_text("data/slices/missing.h5\n")
    with pytest.raises(SplitError, match="missing"):
        _datamodule(root).setup("fit")
    with pytest.raises(ConfigError, match="dataset.format"):
        SemiSegDataModule(
            root=str(root), splits_dir=str(root), split="1", crop_size=32,
            dataset=dict(ACDC, root=str(root), splits_dir=str(root), augment="natural"),
        )  # fmt: skip


def test_validation_list_is_dataset_val_list(tmp_path):
    """ACDC validates on valtest.txt as the public code; a missing list names the key."""
    root = layouts.acdc(tmp_path / "ACDC", val=2)
    names = (root / "splits" / "val.txt").read_text().split()
    (root / "splits" / "valtest.txt").write_text(f"{names[1]}\n")
    dm = _datamodule(root, dataset_keys={"val_list": "valtest.txt"})
    dm.setup("fit")
    assert [v["name"] for v in dm.val_set] == [Path(names[1]).stem]
    (root / "splits" / "valtest.txt").unlink()
    with pytest.raises(SplitError, match=r"valtest.txt not found \(dataset.val_list=valtest.txt\)"):
        _datamodule(root, dataset_keys={"val_list": "valtest.txt"}).setup("fit")


def test_toy_acdc_is_generated_once(tmp_path):
    root = acdc_toy.ensure(tmp_path / "acdc_toy")
    stamp = (root / acdc_toy.VERSION_FILE).stat().st_mtime_ns
    assert acdc_toy.ensure(root) == root
    assert (root / acdc_toy.VERSION_FILE).stat().st_mtime_ns == stamp
    lists = {n: (root / "splits" / str(n) / "labeled.txt").read_text().split() for n in (1, 3, 7)}
    assert len(lists[1]) == acdc_toy.SLICES and set(lists[1]) < set(lists[3]) < set(lists[7])
    assert len((root / "splits" / "val.txt").read_text().split()) == acdc_toy.NUM_VAL_CASES
    image, label = acdc_toy.draw_case(np.random.default_rng(0))
    assert image.shape == label.shape == (acdc_toy.SLICES, acdc_toy.SIZE, acdc_toy.SIZE)
    assert set(np.unique(label)) == {0, 1, 2, 3} and 0 <= image.min() <= image.max() <= 1


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_toy_and_paper_experiments_compose():
    cfg = _compose("experiment=unimatch_acdc_toy")
    assert cfg.dataset.name == "acdc_toy" and cfg.dataset.crop_size == 64
    assert cfg.model._target_.endswith("unet.UNet") and cfg.model.in_channels == 1
    assert cfg.eval.mode == "volume" and cfg.split == 3 and cfg.dataset.val_list == "val.txt"
    cfg = _compose("experiment=unimatch_acdc")
    assert cfg.dataset.val_list == "valtest.txt"  # the public code's validation list
    # the public configs/acdc.yaml: crop 256, batch 12 x 1 GPU, lr 0.01, 300 epochs, tau 0.95
    assert cfg.dataset.crop_size == 256 and cfg.data.batch_size == 12
    assert cfg.optim.lr == 0.01 and cfg.optim.reference_batch == 12 and cfg.optim.lr_multi == 1
    assert cfg.trainer.max_epochs == 300 and cfg.method.tau == 0.95


def test_rgb_model_on_grayscale_data_fails_in_one_line(acdc_root):
    from semiseg.run.build import build_data_and_method

    cfg = _compose(
        "dataset=acdc",
        f"dataset.root={acdc_root}",
        "split=1",
        "data.num_workers=0",
        "data.batch_size=2",
    )
    with pytest.raises(ConfigError, match="model=unet"):
        build_data_and_method(cfg)


@pytest.mark.parametrize(
    "override", ["method=imas", "method=augseg", "method.strong_views=step", "method=css"]
)
def test_rgb_intensity_ops_on_grayscale_data_fail_in_one_line(acdc_root, override):
    from semiseg.run.build import build_data_and_method

    cfg = _compose(
        "experiment=unimatch_acdc", f"dataset.root={acdc_root}", "split=1",
        "data.num_workers=0", "data.batch_size=2", override,
    )  # fmt: skip
    # declared on the method classes: intensity ops on RGB batches, or decoder features (CSS)
    expected = "decoder features" if override == "method=css" else "without in-step intensity ops"
    with pytest.raises(ConfigError, match=expected):
        build_data_and_method(cfg)


@pytest.mark.parametrize("method", ["supervised", "unimatch"])
def test_one_step_and_a_volume_validation_in_process(acdc_root, method):
    
    from semiseg.run.build import build_data_and_method

    cfg = _compose(
        f"experiment={method}_acdc", f"dataset.root={acdc_root}", "split=1",
        "dataset.crop_size=32", "data.num_workers=0", "data.batch_size=2",
    )  # fmt: skip
    datamodule, module = build_data_and_method(cfg)
    trainer = quiet_trainer(max_steps=1, val_check_interval=1, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    entry = module.val_history[0]
    assert 0.0 <= entry["mean_dice"] <= 100.0 and module.best_score == pytest.approx(
        entry["mean_dice"], abs=0.01
    )
    volumes = module.last_state["per_volume_dice"]
    assert set(volumes) == {"patient090_frame01", "patient091_frame01"}
