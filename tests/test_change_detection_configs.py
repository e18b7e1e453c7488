"""The change-detection experiments against the public remote-sensing configs, the one-line
refusal of a single-image model, and one training step with a validation, in process."""

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from semiseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
import layouts  # noqa: E402
from cli import REPO  # noqa: E402


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def whu(tmp_path_factory):
    return layouts.change_detection(tmp_path_factory.mktemp("whu") / "WHU-CD-256", "whu")


@pytest.mark.parametrize("dataset", ["whu_cd", "levir_cd"])
def test_experiments_follow_the_public_configs(dataset):
    # configs/whu.yaml and configs/levir.yaml: crop 256, batch 8 on 1 GPU, lr 0.02, lr_multi 1,
    # 80 epochs, conf_thresh 0.95, DeepLabV3+ ResNet-50 with dilation in the last stage only
    # (output stride 16), ASPP 6/12/18; unimatch.py's loss (x + 0.25 s1 + 0.25 s2 + 0.5 fp) / 2
    cfg = _compose(f"experiment=unimatch_{dataset}")
    assert cfg.dataset.name == dataset and cfg.dataset.val_list == "test.txt"
    assert cfg.dataset.crop_size == 256 and cfg.data.batch_size == 8
    assert cfg.optim.lr == 0.02 and cfg.optim.lr_multi == 1.0 and cfg.optim.reference_batch == 8
    assert cfg.trainer.max_epochs == 80 and cfg.method.tau == 0.95
    assert (cfg.method.weight_s1, cfg.method.weight_s2, cfg.method.weight_fp) == (0.25, 0.25, 0.5)
    assert cfg.model._target_.endswith("ChangeDeepLabV3Plus") and cfg.model.encoder == "resnet50"
    assert cfg.model.output_stride == 16 and list(cfg.model.dilations) == [6, 12, 18]
    assert cfg.model.pretrained == "imagenet" and cfg.model.in_channels == 6
    assert cfg.split == "20%" and cfg.eval.task == "change_detection"
    # the README: the supervised baseline doubles the batch, same lr
    cfg = _compose(f"experiment=supervised_{dataset}", "split=5%")
    assert cfg.data.batch_size == 16 and cfg.optim.lr == 0.02 and cfg.optim.reference_batch == 16
    assert cfg.split == "5%"


def test_toy_experiment_composes():
    cfg = _compose("experiment=unimatch_cd_toy")
    assert cfg.dataset.generate == "cd_toy" and cfg.dataset.crop_size == 64
    assert cfg.model.encoder == "resnet18" and cfg.model.pretrained == "scratch"


def test_single_image_model_fails_in_one_line(whu):
    from semiseg.run.build import build_data_and_method

    cfg = _compose("dataset=whu_cd", f"dataset.root={whu}", "split=5%", "data.batch_size=2")
    with pytest.raises(ConfigError, match="use model=siamese_deeplabv3plus"):
        build_data_and_method(cfg)


def test_one_step_and_a_validation_in_process(whu):
    import lightning as L

    from semiseg.run.build import build_data_and_method

    cfg = _compose(
        "experiment=unimatch_whu_cd", f"dataset.root={whu}", "split=5%", "model.encoder=resnet18",
        "model.pretrained=scratch", "dataset.crop_size=32", "data.num_workers=0",
        "data.batch_size=2",
    )  # fmt: skip
    datamodule, module = build_data_and_method(cfg)
    trainer = L.Trainer(
        max_steps=1, val_check_interval=1, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    entry = module.val_history[0]
    assert module.best_score == entry["iou_changed"]  # the selection score
    results = module.task.train_results(module.val_history, module.last_state)
    assert results["selection"] == "iou_changed"
    assert results["best_val_score"] == results["best_val_iou_changed"] == entry["iou_changed"]
    assert results["best_change_scores"] == {"step": 1, **results["change_scores"]}
    assert 0.0 <= entry["overall_accuracy"] <= 100.0
