"""UniMatch V2 for change detection: the siamese DINOv2 + DPT against a transcription of the public
remote-sensing/model/semseg/dpt.py (one backbone pass on cat(A, B), the head on |f(A) - f(B)|,
Complementary Dropout on the differences), the weak pair labelled by the student as its
unimatch_v2.py does, and experiment=unimatch_v2_{whu,levir}_cd against its configs."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from semiseg.errors import ConfigError
from semiseg.models.change import ChangeDPT

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
import layouts  # noqa: E402
from public_dpt import (  # noqa: E402
    TINY,
    assert_close,
    public_comp_masks,
    public_head,
    public_vit,
    randomise,
)


def tiny_change(num_classes=2):
    return ChangeDPT(num_classes, encoder="dinov2_small", pretrained="scratch", **TINY)


def public_change_dpt(sd, x1, x2, comp_mask=None):
    """remote-sensing DPT.forward(x1, x2, comp_drop) on a state dict of the public names."""
    h, w = x1.shape[-2:]
    backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    feats = public_vit(backbone, torch.cat((x1, x2)), TINY["layers"], TINY["num_heads"])
    feats = [(f.chunk(2)[0] - f.chunk(2)[1]).abs() for f in feats]
    if comp_mask is not None:  # the public masks multiply (N, C, h, w) features per channel
        feats = [f * comp_mask.unsqueeze(1) for f in feats]
    out = public_head(sd, feats, h // 14, w // 14)
    return F.interpolate(out, (h, w), mode="bilinear", align_corners=True)


def test_siamese_dpt_is_the_public_change_forward():
    torch.manual_seed(0)
    model = randomise(tiny_change()).eval()
    a, b = torch.randn(2, 3, 28, 42), torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        ours = model(torch.cat((a, b), dim=1))
        theirs = public_change_dpt(model.state_dict(), a, b)
    assert ours.shape == (2, 2, 28, 42)
    assert_close(ours, theirs)


def test_complementary_dropout_masks_the_differences():
    torch.manual_seed(0)
    model = randomise(tiny_change()).train()
    a, b = torch.randn(4, 3, 28, 28), torch.randn(4, 3, 28, 28)
    torch.manual_seed(3)
    ours = model(torch.cat((a, b), dim=1), complementary_dropout=True)
    torch.manual_seed(3)
    mask = public_comp_masks(4, TINY["embed_dim"])
    with torch.no_grad():
        theirs = public_change_dpt(model.state_dict(), a, b, comp_mask=mask)
    assert_close(ours.detach(), theirs)


def test_a_single_image_is_refused():
    with pytest.raises(ConfigError, match="6 channels"):
        ChangeDPT(2, encoder="dinov2_small", pretrained="scratch", in_channels=3, **TINY)
    with pytest.raises(ValueError, match="pairs"):
        tiny_change()(torch.randn(1, 3, 28, 28))


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(TESTS.parent / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("dataset", ["whu_cd", "levir_cd"])
def test_experiments_follow_the_public_remote_sensing_configs(dataset):
    # remote-sensing/configs/{whu,levir}.yaml: dinov2_base, crop 252, batch 8 on 1 GPU, lr 5e-6,
    # lr_multi 40, 60 epochs, conf_thresh 0.95, lock_backbone False; AdamW (0.9, 0.999), 0.01
    cfg = _compose(f"experiment=unimatch_v2_{dataset}")
    assert cfg.dataset.name == dataset and cfg.dataset.crop_size == 252
    assert cfg.model._target_.endswith("ChangeDPT") and cfg.model.encoder == "dinov2_base"
    assert cfg.model.in_channels == 6 and cfg.model.freeze_backbone is False
    assert cfg.data.batch_size == 8 and cfg.optim.reference_batch == 8
    assert cfg.optim.name == "adamw" and list(cfg.optim.betas) == [0.9, 0.999]
    assert (cfg.optim.lr, cfg.optim.lr_multi, cfg.optim.weight_decay) == (5e-6, 40.0, 0.01)
    assert cfg.trainer.max_epochs == 60 and cfg.method.tau == 0.95
    assert cfg.method.name == "unimatch_v2" and cfg.method.ema_alpha == 0.996
    assert cfg.method.pseudo_labeler == "student" and cfg.eval.model == "teacher"
    assert cfg.split == "20%"


@pytest.fixture(scope="module")
def whu(tmp_path_factory):
    return layouts.change_detection(tmp_path_factory.mktemp("whu") / "WHU-CD-256", "whu")


def _module(whu, *overrides):
    from semiseg.run.build import build_data_and_method

    cfg = _compose(
        "experiment=unimatch_v2_whu_cd", f"dataset.root={whu}", "split=5%",
        "model.pretrained=scratch", *(f"model.{k}={v}" for k, v in TINY.items()),
        "dataset.crop_size=28", "data.num_workers=0", "data.batch_size=2", *overrides,
    )  # fmt: skip
    return build_data_and_method(cfg)


def test_the_weak_pair_is_labelled_by_the_student(whu):
    """pseudo_labeler=student: the student's argmax and confidence, whatever the teacher holds."""
    _, module = _module(whu)
    randomise(module.model, 1)
    randomise(module.teacher.network, 2)
    weak = torch.randn(2, 6, 28, 28)
    with torch.no_grad():
        student = module.model(weak).softmax(1)
    conf, labels, _ = module.weak_pseudo_labels(weak)
    assert torch.equal(labels, student.argmax(1)) and torch.allclose(conf, student.max(1)[0])
    module.pseudo_labeler = "teacher"
    _, labels_t, _ = module.weak_pseudo_labels(weak)
    assert not torch.equal(labels_t, labels)  # the teacher's differ: the choice means something
    with pytest.raises(InstantiationException, match="pseudo_labeler=ema: choose teacher"):
        _module(whu, "method.pseudo_labeler=ema")


def test_one_step_and_a_validation_in_process(whu):
    import lightning as L

    datamodule, module = _module(whu)
    trainer = L.Trainer(
        max_steps=1, val_check_interval=1, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert module.eval_network_name == "teacher"  # best.ckpt by the EMA model's changed IoU
    entry = module.val_history[0]
    assert module.best_score == entry["iou_changed"]
