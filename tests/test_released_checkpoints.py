"""The authors' released checkpoints as they are: a public unimatch_v2.py file (`model` and
`model_ema`, DDP's `module.` prefix), a bare state dict and a public UniMatch V1 DeepLabV3+ file,
read by predict.py / eval.py / export.py with the model and dataset given on the command line;
the public UniMatch V1 Xception-65 file (COCO) and the public remote-sensing UniMatch V2 file
(siamese DINOv2 + DPT) the same way.

The V2 fixture is written in the public layout from random weights of a tiny DINOv2 + DPT; its
predictions are compared with the public evaluate() transcribed on the same state dict (ImageNet
normalisation, resize to multiples of 14 with align_corners and back, argmax)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli import run_script
from PIL import Image

from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
from semiseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from public_dpt import TINY, assert_close, public_dpt, randomise, tiny  # noqa: E402

PASCAL_CLASSES = 21
SIZES = [(45, 61), (56, 70), (30, 29)]  # (h, w): off the 14-grid, on it, and rounding down
MODEL_ARGS = [
    "model=dpt",
    "model.encoder=dinov2_small",
    f"model.embed_dim={TINY['embed_dim']}",
    f"model.depth={TINY['depth']}",
    f"model.num_heads={TINY['num_heads']}",
    f"model.layers=[{','.join(map(str, TINY['layers']))}]",
    f"model.features={TINY['features']}",
    f"model.out_channels=[{','.join(map(str, TINY['out_channels']))}]",
]


def public_weights(seed):
    return randomise(tiny(PASCAL_CLASSES), seed).state_dict()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """best.pth as the public unimatch_v2.py writes it (rank 0, DDP-wrapped model and EMA)."""
    root = tmp_path_factory.mktemp("released")
    student, teacher = public_weights(1), public_weights(2)
    ddp = {"module." + k: v for k, v in student.items()}
    ddp_ema = {"module." + k: v for k, v in teacher.items()}
    checkpoint = {
        "model": ddp,
        "model_ema": ddp_ema,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-6, "params": [0]}]},
        "epoch": 3,
        "previous_best": 70.1,
        "previous_best_ema": 70.4,
        "best_epoch": 3,
        "best_epoch_ema": 2,
    }
    torch.save(checkpoint, root / "best.pth")
    torch.save(student, root / "bare.pth")  # a bare state dict, no prefix
    images = root / "images"
    images.mkdir()
    g = np.random.default_rng(0)
    for k, (h, w) in enumerate(SIZES):
        pixels = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{k}.png")
    return {"root": root, "student": student, "teacher": teacher, "images": images}


def public_evaluate(state_dict, image_path):
    """The public evaluate(mode='original', multiplier=14) on one image: the argmax (H, W)."""
    pixels = np.array(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
    img = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    img = (img - mean) / std
    ori_h, ori_w = img.shape[-2:]
    new_h, new_w = int(ori_h / 14 + 0.5) * 14, int(ori_w / 14 + 0.5) * 14
    img = F.interpolate(img, (new_h, new_w), mode="bilinear", align_corners=True)
    with torch.no_grad():
        pred = public_dpt(state_dict, img, TINY["layers"], TINY["num_heads"])
    pred = F.interpolate(pred, (ori_h, ori_w), mode="bilinear", align_corners=True)
    return pred.argmax(1)[0].numpy()


def predict_released(ckpt, images, output, *extra):
    return run_script(
        "predict.py",
        f"ckpt_path={ckpt}",
        *MODEL_ARGS,
        "dataset=pascal",
        f"input={images}",
        f"output={output}",
        "device=cpu",
        *extra,
        env={"OMP_NUM_THREADS": "1"},
    )


def assert_public_predictions(output, images, state_dict):
    for k in range(len(SIZES)):
        ours = np.array(Image.open(output / "index" / f"img{k}.png"))
        theirs = public_evaluate(state_dict, images / f"img{k}.png")
        assert ours.shape == theirs.shape
        assert len(np.unique(theirs)) >= 3  # a comparison that means something
        assert np.array_equal(ours, theirs), f"img{k}: {(ours != theirs).mean():.4%} differ"


def test_predict_gives_the_public_teachers_predictions(released, tmp_path):
    proc = predict_released(released["root"] / "best.pth", released["images"], tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with the teacher of" in proc.stdout
    assert_public_predictions(tmp_path / "out", released["images"], released["teacher"])


@pytest.mark.slow  # two predict.py runs (about 40 s on a loaded CPU)
def test_the_student_as_an_option_and_a_bare_state_dict(released, tmp_path):
    proc = predict_released(
        released["root"] / "best.pth", released["images"], tmp_path / "s", "eval.model=student"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_public_predictions(tmp_path / "s", released["images"], released["student"])
    proc = predict_released(released["root"] / "bare.pth", released["images"], tmp_path / "b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_public_predictions(tmp_path / "b", released["images"], released["student"])


def test_a_file_of_another_model_is_one_line_naming_the_keys(released):
    cfg = released_cfg([*MODEL_ARGS, "model.depth=3"])
    checkpoint = load_checkpoint(released["root"] / "best.pth", cfg)
    with pytest.raises(ConfigError) as err:
        model_from_checkpoint(checkpoint)
    error = str(err.value)
    assert "\n" not in error, error
    assert "0 missing" in error and "unexpected (backbone.blocks.3." in error
    assert "model.encoder=dinov2_small" in error and "best.pth" in error


def test_without_model_or_dataset_is_one_line(released, tmp_path):
    proc = run_script(
        "predict.py",
        f"ckpt_path={released['root'] / 'best.pth'}",
        "model=dpt",
        f"input={released['images']}",
        f"output={tmp_path / 'o'}",
    )
    assert proc.returncode == 2
    error = proc.stderr.strip()
    assert "\n" not in error and "not a semiseg training checkpoint" in error
    assert "(no dataset given)" in error


def released_cfg(model_overrides, dataset="pascal", config="predict"):
    """conf/<config>.yaml composed as the entry point composes it, for in-process runs."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    extra = ["input=x", "output=y"] if config == "predict" else ["ckpt_path=x"]
    with initialize_config_dir(str(conf), version_base="1.3"):
        return compose(config, [f"dataset={dataset}", *model_overrides, *extra])


def test_eval_scores_the_released_teacher_with_the_training_validation(released, tmp_path):
    """eval.py reads the same file; its validation module holds both networks."""
    from semiseg.run.evaluate import module_from_checkpoint

    cfg = released_cfg(MODEL_ARGS)
    checkpoint = load_checkpoint(released["root"] / "best.pth", cfg)
    evaluation = {"model": "teacher", "mode": "original", "task": "segmentation"}
    module = module_from_checkpoint(checkpoint, evaluation, 28)
    assert module.eval_network_name == "teacher" and set(module.networks()) == {
        "student",
        "teacher",
    }
    for key, value in released["teacher"].items():
        assert torch.equal(module.teacher.state_dict()[key], value), key
    for key, value in released["student"].items():
        assert torch.equal(module.model.state_dict()[key], value), key


def test_a_pickle_that_is_not_a_checkpoint_is_one_line(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "x.pth")
    cfg = released_cfg(MODEL_ARGS)
    with pytest.raises(ConfigError, match="neither a semiseg checkpoint") as err:
        load_checkpoint(tmp_path / "x.pth", cfg)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- UniMatch V1 DeepLabV3+


def public_v1_head_shapes(num_classes, low=256, high=2048, aspp=256):
    """Key -> shape of the public model/semseg/deeplabv3plus.py head, from its constructor."""
    shapes = {}

    def conv_bn(name, cin, cout, k):
        shapes[f"{name}.0.weight"] = (cout, cin, k, k)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.1.{buf}"] = (cout,)
        shapes[f"{name}.1.num_batches_tracked"] = ()

    out = high // 8
    conv_bn("head.b0", high, out, 1)
    for i in (1, 2, 3):
        conv_bn(f"head.b{i}", high, out, 3)
    shapes["head.b4.gap.1.weight"] = (out, high, 1, 1)
    for buf in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"head.b4.gap.2.{buf}"] = (out,)
    shapes["head.b4.gap.2.num_batches_tracked"] = ()
    conv_bn("head.project", 5 * out, out, 1)
    conv_bn("reduce", low, 48, 1)
    # fuse: conv, BN, ReLU, conv, BN, ReLU -> indices 0, 1, 3, 4
    shapes["fuse.0.weight"] = (256, out + 48, 3, 3)
    shapes["fuse.3.weight"] = (256, 256, 3, 3)
    for i in (1, 4):
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"fuse.{i}.{buf}"] = (256,)
        shapes[f"fuse.{i}.num_batches_tracked"] = ()
    shapes["classifier.weight"] = (num_classes, 256, 1, 1)
    shapes["classifier.bias"] = (num_classes,)
    return shapes


def _bn(x, sd, name):
    return F.batch_norm(
        x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
        sd[f"{name}.bias"], False, 0.0, 1e-5,
    )  # fmt: skip


def public_v1_decode(sd, c1, c4, size, dilations=(6, 12, 18)):
    """The public DeepLabV3Plus._decode and forward's resize, in eval mode, on its names."""

    def cbr(x, name, **kw):
        return F.relu(_bn(F.conv2d(x, sd[f"{name}.0.weight"], **kw), sd, f"{name}.1"))

    feats = [cbr(c4, "head.b0")]
    for i, d in enumerate(dilations, 1):
        feats.append(cbr(c4, f"head.b{i}", padding=d, dilation=d))
    pool = F.conv2d(F.adaptive_avg_pool2d(c4, 1), sd["head.b4.gap.1.weight"])
    pool = F.relu(_bn(pool, sd, "head.b4.gap.2"))
    feats.append(F.interpolate(pool, c4.shape[-2:], mode="bilinear", align_corners=True))
    x = cbr(torch.cat(feats, 1), "head.project")
    x = F.interpolate(x, c1.shape[-2:], mode="bilinear", align_corners=True)
    x = torch.cat([cbr(c1, "reduce"), x], 1)
    x = F.relu(_bn(F.conv2d(x, sd["fuse.0.weight"], padding=1), sd, "fuse.1"))
    x = F.relu(_bn(F.conv2d(x, sd["fuse.3.weight"], padding=1), sd, "fuse.4"))
    out = F.conv2d(x, sd["classifier.weight"], sd["classifier.bias"])
    return F.interpolate(out, size, mode="bilinear", align_corners=True)


def test_a_public_unimatch_v1_file_loads_and_predicts_as_the_public_model(tmp_path):
    from semiseg.models.deeplabv3plus import DeepLabV3Plus

    g = torch.Generator().manual_seed(0)
    backbone = DeepLabV3Plus(PASCAL_CLASSES, encoder="resnet50", pretrained="scratch")
    backbone = {f"backbone.{k}": v for k, v in backbone.backbone.state_dict().items()}
    head = {
        k: (torch.rand(s, generator=g) + 0.5 if "running_var" in k else torch.randn(s, generator=g))
        if s
        else torch.tensor(7)
        for k, s in public_v1_head_shapes(PASCAL_CLASSES).items()
    }
    public = {**backbone, **head}
    torch.save(
        {"model": {"module." + k: v for k, v in public.items()}, "epoch": 79}, tmp_path / "b.pth"
    )
    cfg = released_cfg(["model=deeplabv3plus", "model.encoder=resnet50"])
    checkpoint = load_checkpoint(tmp_path / "b.pth", cfg)
    assert checkpoint["semiseg"]["eval_network"] == "student"  # V1 has no teacher
    model = model_from_checkpoint(checkpoint).eval()
    x = torch.randn(1, 3, 65, 81, generator=g)
    with torch.no_grad():
        low, high = model.encode(x)
        ours = model(x)
        theirs = public_v1_decode(public, low, high, x.shape[-2:])
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


@pytest.mark.slow  # a 55M-parameter network written, loaded and run twice (about 15 s of CPU)
def test_a_public_unimatch_v1_xception_file_predicts_as_the_public_model(tmp_path):
    """The public COCO file (DeepLabV3+ on Xception-65, DDP-wrapped) written from a transcription
    of the public constructors' names with random weights: every tensor loads, and the logits
    are the public base_forward + decode transcribed on the same state dict."""
    from public_xception import public_random, public_xception_forward, public_xception_shapes

    g = torch.Generator().manual_seed(0)
    shapes = {f"backbone.{k}": s for k, s in public_xception_shapes().items()}
    shapes.update(public_v1_head_shapes(81))  # COCO: 81 classes in the public config
    public = public_random(shapes, g)
    torch.save(
        {"model": {"module." + k: v for k, v in public.items()}, "epoch": 29}, tmp_path / "x.pth"
    )
    cfg = released_cfg(["model=deeplabv3plus", "model.encoder=xception65"], dataset="coco")
    checkpoint = load_checkpoint(tmp_path / "x.pth", cfg)
    model = model_from_checkpoint(checkpoint).eval()
    ours_state = model.state_dict()
    assert len(ours_state) == len(public)  # every public tensor loaded, none left at init
    for key in shapes:  # the backbone under the public names, unchanged
        if key.startswith("backbone."):
            assert torch.equal(ours_state[key], public[key]), key
    x = torch.randn(1, 3, 65, 81, generator=g)
    backbone = {k.removeprefix("backbone."): v for k, v in public.items() if "backbone." in k}
    with torch.no_grad():
        ours = model(x)
        c1, c4 = public_xception_forward(backbone, x)
        theirs = public_v1_decode(public, c1, c4, x.shape[-2:])
    assert ours.shape == (1, 81, 65, 81)
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


# ---------------------------------------------------------------- ONNX export of model=dpt


@pytest.mark.slow  # the dynamo export of the ViT takes about a minute on a loaded CPU
def test_dpt_onnx_export_holds_at_every_size(released, tmp_path):
    """export.py on the released V2 file: one ONNX graph for every height and width (the resize
    to multiples of 14 and the positional embedding's resize computed in it), equal to PyTorch
    off the 14-grid, on it, and on the pretrained 37 x 37 grid (518 px: the embedding as it is)."""
    pytest.importorskip("onnxruntime")
    from semiseg import export

    path = tmp_path / "v2.onnx"
    cfg = released_cfg(MODEL_ARGS, config="export")
    cfg.ckpt_path, cfg.output = str(released["root"] / "best.pth"), str(path)
    meta = export.run(cfg)
    assert meta["network"] == "teacher" and len(meta["class_names"]) == PASCAL_CLASSES
    onnx_model = export.load_model("onnx", path)
    checkpoint = load_checkpoint(released["root"] / "best.pth", cfg)
    reference = model_from_checkpoint(checkpoint).eval()
    shapes = [(1, 45, 61), (2, 56, 70), (1, 30, 29), (1, 518, 518), (1, 20, 90)]
    for result in export.parity(reference, onnx_model, shapes):
        assert result["max_abs_diff"] <= 1e-3 * max(1.0, result["max_abs_logit"]), result
        assert result["argmax_agreement"] >= 0.9999, result  # near-ties of logits up to ~400


@pytest.mark.slow  # an eval.py process (about 20 s on a loaded CPU)
def test_eval_py_scores_the_released_teacher_as_the_public_evaluate(released, tmp_path):
    """eval.py on the released file: the teacher by default, its saved predictions the public
    evaluate()'s argmax on each validation image (40 x 32: off the 14-grid)."""
    import json

    import layouts

    root = layouts.pascal(tmp_path / "pascal")
    out = tmp_path / "eval"
    proc = run_script(
        "eval.py",
        f"ckpt_path={released['root'] / 'best.pth'}",
        *MODEL_ARGS,
        "dataset=pascal",
        f"dataset.root={root}",
        "dataset.check_images=0",
        "save_predictions=true",
        "device=cpu",
        f"hydra.run.dir={out}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["eval_network"] == "teacher" and results["method"] == "released"
    for name in ("2007_000006", "2007_000007"):
        ours = np.array(Image.open(out / "predictions" / f"{name}.png"))
        theirs = public_evaluate(released["teacher"], root / "JPEGImages" / f"{name}.jpg")
        assert np.array_equal(ours, theirs), name


# ---------------------------------------------------------------- UniMatch V2 remote sensing

CD_ARGS = [
    "model=siamese_dpt",
    *MODEL_ARGS[1:],  # the tiny DINOv2 + DPT
]


@pytest.fixture(scope="module")
def released_cd(tmp_path_factory):
    """best.pth as the public remote-sensing/unimatch_v2.py writes it: `model` and `model_ema`
    of the DDP-wrapped siamese DPT (the segmentation DPT's names, 2 classes), beside the
    change-detection bests."""
    root = tmp_path_factory.mktemp("released_cd")
    student, teacher = (randomise(tiny(2), seed).state_dict() for seed in (3, 4))
    torch.save(
        {
            "model": {"module." + k: v for k, v in student.items()},
            "model_ema": {"module." + k: v for k, v in teacher.items()},
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 59,
            "previous_best_iou": 80.1,
            "previous_best_acc": 98.2,
            "previous_best_ema_iou": 80.5,
            "previous_best_ema_acc": 98.3,
            "best_epoch": 57,
            "best_epoch_ema": 58,
        },
        root / "best.pth",
    )
    return {"path": root / "best.pth", "student": student, "teacher": teacher}


def public_change_evaluate(state_dict, a, b):
    """The public remote-sensing evaluate(multiplier=14) on a normalised pair: both images
    resized to the nearest multiples of 14 (align_corners), DPT.forward(A, B) (one ViT pass on
    cat(A, B), the head on |f(A) - f(B)|, the logits resized to the input), back to the pair's
    size: the logits whose argmax it scores."""
    from methods.test_unimatch_v2_change import public_change_dpt

    ori_h, ori_w = a.shape[-2:]
    size = (int(ori_h / 14 + 0.5) * 14, int(ori_w / 14 + 0.5) * 14)
    a, b = (F.interpolate(x, size, mode="bilinear", align_corners=True) for x in (a, b))
    with torch.no_grad():
        pred = public_change_dpt(state_dict, a, b)
    return F.interpolate(pred, (ori_h, ori_w), mode="bilinear", align_corners=True)


def test_a_public_remote_sensing_file_loads_into_siamese_dpt(released_cd):
    """Every tensor of both networks loads; the teacher (the default) predicts a pair off the
    14-grid as the public evaluate(), and so does the student when asked for."""
    from semiseg.models.change import ChangeDPT
    from semiseg.run.evaluate import module_from_checkpoint

    cfg = released_cfg(CD_ARGS, dataset="levir_cd", config="eval")
    checkpoint = load_checkpoint(released_cd["path"], cfg)
    assert checkpoint["semiseg"]["eval_network"] == "teacher"
    evaluation = {"model": "teacher", "mode": "original", "task": "change_detection"}
    module = module_from_checkpoint(checkpoint, evaluation, 28)
    assert isinstance(module.teacher, ChangeDPT) and isinstance(module.model, ChangeDPT)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 45, 61, generator=g), torch.randn(2, 3, 45, 61, generator=g)
    for network, name in ((module.teacher, "teacher"), (module.model, "student")):
        state = network.state_dict()
        assert state.keys() == released_cd[name].keys()
        for key, value in released_cd[name].items():
            assert torch.equal(state[key], value), key
        with torch.no_grad():
            ours = network.eval()(torch.cat((a, b), dim=1))
        theirs = public_change_evaluate(released_cd[name], a, b)
        assert ours.shape == theirs.shape == (2, 2, 45, 61)
        assert_close(ours, theirs)
        assert torch.equal(ours.argmax(1), theirs.argmax(1)), name
