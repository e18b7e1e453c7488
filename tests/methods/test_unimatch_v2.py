"""method=unimatch_v2 against a transcription of the public unimatch_v2.py step: the loss with
the same weights and the same Complementary Dropout masks, the loss worked out by hand (values
at the threshold included), the EMA schedule on parameters and buffers, AdamW with its groups,
and the real config and data module."""

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError, exit_on_user_error
from semiseg.methods.unimatch_v2 import FixMatchV2, UniMatchV2
from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.run.build import build_data_and_method

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, run_eval, train_on_toy  # noqa: E402
from public_dpt import TINY, public_comp_masks, public_dpt, randomise, tiny  # noqa: E402

ADAMW = {"name": "adamw", "lr": 5e-6, "lr_multi": 40.0, "betas": [0.9, 0.999],
         "weight_decay": 0.01, "poly_power": 0.9, "clip_grad": None}  # fmt: skip
# model=dpt at test sizes: a 4-block ViT 32 wide, crops of 28 (2 x 2 patches)
DPT_TINY = [
    "model=dpt",
    "model.encoder=dinov2_small",
    "model.pretrained=scratch",
    "model.embed_dim=32",
    "model.depth=4",
    "model.num_heads=2",
    "model.layers=[0,1,2,3]",
    "model.features=16",
    "model.out_channels=[8,16,32,24]",
    "dataset.crop_size=28",
    "optim.name=adamw",
]


def _module(model, optim=ADAMW, **kwargs):
    return UniMatchV2(
        model=model,
        class_names=["a", "b", "c"],
        optim=optim,
        evaluation={"mode": "original"},
        crop_size=28,
        **kwargs,
    )


# ---------------------------------------------------------------- the public step, transcribed


def public_step(model_sd, ema_sd, batch, tau=0.95):
    """The body of unimatch_v2.py's training loop up to `loss`, on copies of the batch; the
    networks are the public DPT transcription with the given weights; the comp_drop masks are
    drawn at the same point of the step, from the global generator, as there."""
    img_x, mask_x = batch["labeled"]["image"].clone(), batch["labeled"]["mask"].clone()
    u = {k: v.clone() for k, v in batch["unlabeled"].items()}
    img_u_w, img_u_s1, img_u_s2 = u["weak"], u["strong1"], u["strong2"]
    ignore_mask, cutmix_box1, cutmix_box2 = u["ignore"], u["box1"], u["box2"]
    layers, heads = TINY["layers"], TINY["num_heads"]

    with torch.no_grad():
        pred_u_w = public_dpt(ema_sd, img_u_w, layers, heads).detach()
        conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
        mask_u_w = pred_u_w.argmax(dim=1)

    box1 = cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1
    img_u_s1[box1] = img_u_s1.flip(0)[box1]
    box2 = cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1
    img_u_s2[box2] = img_u_s2.flip(0)[box2]

    pred_x = public_dpt(model_sd, img_x, layers, heads)
    strong = torch.cat((img_u_s1, img_u_s2))
    masks = public_comp_masks(strong.shape[0], TINY["embed_dim"])
    pred_u_s1, pred_u_s2 = public_dpt(model_sd, strong, layers, heads, comp_mask=masks).chunk(2)

    m1, c1, i1 = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
    m2, c2, i2 = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
    m1[cutmix_box1 == 1] = mask_u_w.flip(0)[cutmix_box1 == 1]
    c1[cutmix_box1 == 1] = conf_u_w.flip(0)[cutmix_box1 == 1]
    i1[cutmix_box1 == 1] = ignore_mask.flip(0)[cutmix_box1 == 1]
    m2[cutmix_box2 == 1] = mask_u_w.flip(0)[cutmix_box2 == 1]
    c2[cutmix_box2 == 1] = conf_u_w.flip(0)[cutmix_box2 == 1]
    i2[cutmix_box2 == 1] = ignore_mask.flip(0)[cutmix_box2 == 1]

    loss_x = nn.CrossEntropyLoss(ignore_index=255)(pred_x, mask_x)
    criterion_u = nn.CrossEntropyLoss(reduction="none")
    loss_u_s1 = criterion_u(pred_u_s1, m1) * ((c1 >= tau) & (i1 != 255))
    loss_u_s1 = loss_u_s1.sum() / (i1 != 255).sum().item()
    loss_u_s2 = criterion_u(pred_u_s2, m2) * ((c2 >= tau) & (i2 != 255))
    loss_u_s2 = loss_u_s2.sum() / (i2 != 255).sum().item()
    loss_u_s = (loss_u_s1 + loss_u_s2) / 2.0
    loss = (loss_x + loss_u_s) / 2.0
    mask_ratio = ((conf_u_w >= tau) & (ignore_mask != 255)).sum().item() / (
        ignore_mask != 255
    ).sum()
    return {"loss": loss, "loss_x": loss_x, "loss_s": loss_u_s, "mask_ratio": mask_ratio}


def _batch(n=4, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    ignore = torch.zeros(n, size, size, dtype=torch.long)
    ignore[0, -5:, :] = 255  # a padded strip
    boxes = torch.zeros(2, n, size, size)
    boxes[0, :, 3:17, 5:20] = 1
    boxes[1, 1:3, 10:, :12] = 1
    return {
        "labeled": {
            "image": torch.randn(2, 3, size, size, generator=g),
            "mask": torch.randint(0, 3, (2, size, size), generator=g).masked_fill(
                ignore[:2] > 0, 255
            ),
        },
        "unlabeled": {
            "weak": torch.randn(n, 3, size, size, generator=g),
            "strong1": torch.randn(n, 3, size, size, generator=g),
            "strong2": torch.randn(n, 3, size, size, generator=g),
            "ignore": ignore,
            "box1": boxes[0],
            "box2": boxes[1],
            "gt": torch.full((n, size, size), 255, dtype=torch.long),
        },
    }


@pytest.mark.parametrize("tau", [0.95, 0.6])
def test_step_loss_is_the_public_one(tau):
    torch.manual_seed(0)
    module = _module(randomise(tiny(3), seed=0), tau=tau)
    randomise(module.teacher.network, seed=1)  # a teacher unlike its student
    module.train()
    batch = _batch()
    torch.manual_seed(5)
    ours = module.training_losses(TrainBatch.parse(batch))
    torch.manual_seed(5)
    theirs = public_step(
        module.model.state_dict(), module.teacher.network.state_dict(), batch, tau=tau
    )
    for key in ("loss", "loss_x", "loss_s", "mask_ratio"):
        assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-4, abs=1e-6), key
    if tau == 0.6:  # some pseudo-labels pass: the unlabeled terms are not trivially 0
        assert 0 < float(ours["mask_ratio"]) < 1 and float(ours["loss_s"]) > 0
    # the batch is untouched (the public code pastes in place; here the views are new tensors)
    assert torch.equal(batch["unlabeled"]["strong1"], _batch()["unlabeled"]["strong1"])
    ours["loss"].backward()
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in module.teacher.parameters())


def public_fixmatch_step(model_sd, ema_sd, batch, tau=0.95):
    """The body of the V2 code's fixmatch.py loop up to `loss`."""
    img_x, mask_x = batch["labeled"]["image"].clone(), batch["labeled"]["mask"].clone()
    u = {k: v.clone() for k, v in batch["unlabeled"].items()}
    img_u_w, img_u_s, ignore_mask, cutmix_box = u["weak"], u["strong1"], u["ignore"], u["box1"]
    layers, heads = TINY["layers"], TINY["num_heads"]
    with torch.no_grad():
        pred_u_w = public_dpt(ema_sd, img_u_w, layers, heads).detach()
        conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
        mask_u_w = pred_u_w.argmax(dim=1)
    box = cutmix_box.unsqueeze(1).expand(img_u_s.shape) == 1
    img_u_s[box] = img_u_s.flip(0)[box]
    num_lb, num_ulb = img_x.shape[0], img_u_s.shape[0]
    pred_x, pred_u_s = public_dpt(model_sd, torch.cat((img_x, img_u_s)), layers, heads).split(
        [num_lb, num_ulb]
    )
    m, c, i = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
    m[cutmix_box == 1] = mask_u_w.flip(0)[cutmix_box == 1]
    c[cutmix_box == 1] = conf_u_w.flip(0)[cutmix_box == 1]
    i[cutmix_box == 1] = ignore_mask.flip(0)[cutmix_box == 1]
    loss_x = nn.CrossEntropyLoss(ignore_index=255)(pred_x, mask_x)
    loss_u_s = nn.CrossEntropyLoss(reduction="none")(pred_u_s, m) * ((c >= tau) & (i != 255))
    loss_u_s = loss_u_s.sum() / (i != 255).sum().item()
    return {"loss": (loss_x + loss_u_s) / 2.0, "loss_x": loss_x, "loss_s": loss_u_s}


def test_fixmatch_v2_step_loss_is_the_public_one():
    torch.manual_seed(0)
    module = FixMatchV2(
        model=randomise(tiny(3), seed=0), class_names=["a", "b", "c"], optim=ADAMW,
        evaluation={"mode": "original"}, crop_size=28, tau=0.6,
    )  # fmt: skip
    randomise(module.teacher.network, seed=1)
    module.train()
    batch = _batch()
    ours = module.training_losses(TrainBatch.parse(batch))
    theirs = public_fixmatch_step(
        module.model.state_dict(), module.teacher.network.state_dict(), batch, tau=0.6
    )
    for key in ("loss", "loss_x", "loss_s"):
        assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-4, abs=1e-6), key
    assert float(ours["loss_s"]) > 0
    # after an experiment=unimatch_v2_* recipe, method=fixmatch_v2 replaces the method only
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=unimatch_v2_pascal", "method=fixmatch_v2"])
    assert FixMatchV2.data_requirements(cfg.method) == {
        "unlabeled": True,
        "num_strong": 1,
        "mix": None,
    }
    assert cfg.method.name == "fixmatch_v2" and cfg.optim.name == "adamw"
    assert cfg.model._target_ == "semiseg.models.dpt.DPT"


# ---------------------------------------------------------------- the loss by hand


class Channels(nn.Module):
    """Logits = the image's first two channels; records (batch, complementary_dropout)."""

    complementary_dropout = True

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, complementary_dropout=False):
        self.calls.append((x.shape[0], complementary_dropout))
        return x[:, :2] + self.bias

    def backbone_parameters(self):
        return iter(())

    def head_parameters(self):
        return iter([self.bias])


def _pixels(*logits):
    """(N, 3, 1, 2) images from per-pixel logit pairs [(a, b), (a, b)] per image."""
    image = torch.zeros(len(logits), 3, 1, 2)
    for i, pair in enumerate(logits):
        for j, (a, b) in enumerate(pair):
            image[i, 0, 0, j], image[i, 1, 0, j] = a, b
    return image


L19 = math.log(19.0)  # softmax([ln 19, 0]) = 0.95: a pixel at the threshold


def _hand_batch():
    below = math.log(18.9)  # conf 0.9497: below the threshold
    return {
        "labeled": {
            "image": _pixels([(0, 0), (0, 0)]),
            "mask": torch.tensor([[[1, 255]]]),
        },
        "unlabeled": {
            # teacher: image 0 (0.95, label 0) (0.5, label 0); image 1 (0.982, label 1) (0.9497, 0)
            "weak": _pixels([(L19, 0), (0, 0)], [(0, 4), (below, 0)]),
            "strong1": _pixels([(0, 0), (0, 0)], [(0, 0), (0, 0)]),
            "strong2": _pixels([(2, 0), (2, 0)], [(2, 0), (0, 2)]),
            "ignore": torch.tensor([[[0, 0]], [[0, 255]]]),  # image 1's second pixel is padding
            "box1": torch.zeros(2, 1, 2),
            "box2": torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]]),  # image 0, pixel 2 from image 1
            "gt": torch.full((2, 1, 2), 255),
        },
    }


def test_loss_worked_out_by_hand():
    module = _module(Channels())
    with torch.no_grad():
        conf = _hand_batch()["unlabeled"]["weak"][:1, :2].softmax(1).max(1).values[0, 0, 0]
    module.tau = float(conf)  # exactly 0.95 in float32: the first pixel sits at the threshold
    module.train()
    losses = module.training_losses(TrainBatch.parse(_hand_batch()))
    ln2, soft = math.log(2), math.log(1 + math.exp(-2))
    # labeled: logits (0, 0) on its one labeled pixel -> ln 2
    assert float(losses["loss_x"]) == pytest.approx(ln2)
    # view 1 (no box): logits (0, 0), CE ln 2 anywhere; confident and not padded: image 0 pixel 1
    # (conf = tau counts) and image 1 pixel 1 (0.982), over 3 non-padded pixels
    assert float(losses["loss_s1"]) == pytest.approx(2 * ln2 / 3)
    # view 2: image 0 pixel 2 takes image 1 pixel 2 (padding: out of the denominator too);
    # logits (2, 0): label 0 -> ln(1 + e^-2), label 1 -> 2 + ln(1 + e^-2); 2 non-padded pixels
    assert float(losses["loss_s2"]) == pytest.approx((soft + 2 + soft) / 2)
    loss_s = (2 * ln2 / 3 + (2 + 2 * soft) / 2) / 2
    assert float(losses["loss_s"]) == pytest.approx(loss_s)
    assert float(losses["loss"]) == pytest.approx((ln2 + loss_s) / 2)
    assert float(losses["mask_ratio"]) == pytest.approx(2 / 3)
    # the student: labeled alone, then both strong views in one forward with the masks
    assert module.model.calls == [(1, False), (4, True)]
    assert module.teacher.network.calls == [(2, False)]

    # just above the threshold, the first pixel no longer counts
    module.tau = float(torch.nextafter(conf, torch.tensor(1.0)))
    losses = module.training_losses(TrainBatch.parse(_hand_batch()))
    assert float(losses["loss_s1"]) == pytest.approx(ln2 / 3)
    assert float(losses["loss_s2"]) == pytest.approx((2 + soft) / 2)
    assert float(losses["mask_ratio"]) == pytest.approx(1 / 3)


def test_without_complementary_dropout_the_views_go_through_a_plain_forward():
    module = _module(Channels(), complementary_dropout=False)
    module.train()
    module.training_losses(TrainBatch.parse(_hand_batch()))
    assert module.model.calls == [(1, False), (4, False)]


def test_needs_a_model_with_complementary_dropout():
    with pytest.raises(ConfigError, match="use model=dpt"):
        _module(DeepLabV3Plus(num_classes=3, encoder="resnet18"))
    _module(DeepLabV3Plus(num_classes=3, encoder="resnet18"), complementary_dropout=False)


# ---------------------------------------------------------------- the EMA teacher


class WithBuffers(Channels):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.norm = nn.BatchNorm2d(2)


def test_ema_schedule_on_parameters_and_buffers():
    """The public update after iteration t: ema = ema * r + student * (1 - r),
    r = min(1 - 1/(t + 1), 0.996), for every parameter and every buffer."""
    torch.manual_seed(0)
    module = _module(WithBuffers())
    reference = copy.deepcopy(module.model)  # model_ema = deepcopy(model)
    g = torch.Generator().manual_seed(1)
    for t in range(300):
        with torch.no_grad():  # the student moves (a step), its statistics too
            for tensor in [*module.model.parameters(), *module.model.buffers()]:
                if tensor.is_floating_point():
                    tensor.add_(torch.randn(tensor.shape, generator=g))
        module.after_optimizer_step()
        ratio = min(1 - 1 / (t + 1), 0.996)
        with torch.no_grad():
            for ema, new in zip(reference.parameters(), module.model.parameters(), strict=True):
                ema.copy_(ema * ratio + new.detach() * (1 - ratio))
            for ema, new in zip(reference.buffers(), module.model.buffers(), strict=True):
                if ema.is_floating_point():  # the public code truncates num_batches_tracked
                    ema.copy_(ema * ratio + new.detach() * (1 - ratio))
        if t in (0, 1, 2, 248, 249, 299):
            decay = module.teacher.alpha if t >= 249 else 1 - 1 / (t + 1)
            assert min(1 - 1 / (t + 1), 0.996) == pytest.approx(decay)
    assert module.ema_updates == 300
    teacher = module.teacher.network.state_dict()
    for key, value in reference.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(teacher[key], value, atol=1e-5), key
    assert not module.teacher.network.training  # always predicts in eval mode
    assert module.teacher.alpha == 0.996


# ---------------------------------------------------------------- optimiser and config


def test_adamw_groups_and_the_sgd_default():
    module = _module(tiny(3))
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == 5e-6 and head["lr"] == pytest.approx(5e-6 * 40)
    assert backbone["betas"] == head["betas"] == (0.9, 0.999)
    assert backbone["weight_decay"] == head["weight_decay"] == 0.01
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    # model.freeze_backbone: the backbone group is empty (the public lock_backbone)
    frozen = _module(tiny(3, freeze_backbone=True)).configure_optimizers()
    assert frozen.param_groups[0]["params"] == []
    sgd = dict(ADAMW, name="sgd", momentum=0.9)
    assert isinstance(_module(tiny(3), optim=sgd).configure_optimizers(), torch.optim.SGD)
    with pytest.raises(ConfigError, match="optim.name 'adam' is unknown"):
        _module(tiny(3), optim=dict(ADAMW, name="adam"))


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["method=unimatch_v2", *overrides])


def test_config_and_data_requirements():
    cfg = _compose(*DPT_TINY)
    assert cfg.method.tau == 0.95 and cfg.method.ema_alpha == 0.996
    assert cfg.method.mix_partner == "flip" and cfg.method.complementary_dropout
    assert UniMatchV2.data_requirements(cfg.method) == {
        "unlabeled": True,
        "num_strong": 2,
        "mix": None,  # the partner is the batch itself, reversed
    }
    step = _compose(*DPT_TINY, "method.strong_views=step", "method.mix_partner=shuffle").method
    assert UniMatchV2.data_requirements(step) == {
        "unlabeled": True,
        "num_strong": 0,
        "mix": "shuffle",
    }
    assert UniMatchV2.default_eval_network == "student"


def test_training_step_with_the_real_config_and_data(toy_root):
    cfg = _compose(f"dataset.root={toy_root}", *DPT_TINY, "data.batch_size=2", "data.num_workers=0")
    datamodule, module = build_data_and_method(cfg)
    batch = {k: next(iter(loader)) for k, loader in datamodule.train_dataloader().items()}
    assert batch["unlabeled"]["weak"].shape[-2:] == (28, 28)
    module.train()
    losses = module.training_losses(TrainBatch.parse(batch))
    losses["loss"].backward()
    assert {"loss", "loss_x", "loss_s", "loss_s1", "loss_s2", "mask_ratio"} <= set(losses)
    assert all(torch.isfinite(torch.as_tensor(v)) for k, v in losses.items() if k != "pseudo_acc")
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in module.teacher.parameters())
    assert isinstance(module.configure_optimizers(), torch.optim.AdamW)


def test_a_crop_that_is_not_a_multiple_of_14_is_refused(toy_root, capsys):
    """One line, exit 2, as train.py prints it."""
    cfg = _compose(f"dataset.root={toy_root}", *DPT_TINY, "dataset.crop_size=64")
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(build_data_and_method)(cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: dataset.crop_size=64 is not a multiple of the ViT's patch size 14: use 56 or 70"
    )


@pytest.mark.slow
def test_trains_and_validates_student_and_teacher(tmp_path, toy_root):
    run_dir = tmp_path / "run"
    train_on_toy(toy_root, "method=unimatch_v2", *DPT_TINY, f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 3 and results["eval_network"] == "student"
    last = results["val_history"][-1]
    assert set(last) == {"step", "miou", "miou_teacher"}
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["semiseg"]["ema_updates"] == 3
    # eval.py: the student by default, the teacher on request, the numbers training logged
    proc = run_eval(run_dir, tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["val_miou"] == pytest.approx(results["val_miou"], abs=0.01)
    proc = run_eval(run_dir, tmp_path / "eval_teacher", "eval.model=teacher")
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher = json.loads((tmp_path / "eval_teacher" / "results.json").read_text())
    assert teacher["val_miou"] == pytest.approx(last["miou_teacher"], abs=0.01)


def test_resize_of_validation_images_is_the_public_one():
    """Whole toy validation images of any size: the DPT resizes them to multiples of 14 and
    back (models/dpt.py), so validation needs no option of its own."""
    model = randomise(tiny(3)).eval()
    image = torch.randn(1, 3, 75, 61)
    with torch.no_grad():
        inside = F.interpolate(image, (70, 56), mode="bilinear", align_corners=True)
        expected = F.interpolate(model(inside), (75, 61), mode="bilinear", align_corners=True)
        assert torch.allclose(model(image), expected, atol=1e-5)


def public_sliding_window(model, img, grid, nclass):
    """supervised.py's evaluate(mode='sliding_window'): windows of the crop, stride 2/3, the last
    one ending at the border; softmax sums."""
    b, _, h, w = img.shape
    final = torch.zeros(b, nclass, h, w)
    row = 0
    while row < h:
        col = 0
        while col < w:
            pred = model(img[:, :, row : row + grid, col : col + grid])
            final[:, :, row : row + grid, col : col + grid] += pred.softmax(dim=1)
            if col == w - grid:
                break
            col = min(col + int(grid * 2 / 3), w - grid)
        if row == h - grid:
            break
        row = min(row + int(grid * 2 / 3), h - grid)
    return final


def test_sliding_window_validation_is_the_public_one():
    """Cityscapes: eval.mode=sliding_window with eval.window_border=align (the V2 recipe)."""
    from semiseg.evaluation.inference import predict

    model = randomise(tiny(3)).eval()
    image = torch.randn(2, 3, 56, 98)
    with torch.no_grad():
        theirs = public_sliding_window(model, image, 42, 3)
        ours = predict(model, image, "sliding_window", 42, 3, border="align", window_batch=4)
    assert torch.allclose(ours, theirs, atol=1e-5)
