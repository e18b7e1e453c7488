"""model=daformer (MiT + DAFormer head) and model=deeplabv2 (ResNetV1c + DLV2 head), the networks
of FST's UDA tables: output shapes, the public tensor layouts loading into every tensor, and the
forwards against transcriptions of the public code (tests/public_daformer.py) with the same
weights."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semiseg.errors import ConfigError
from semiseg.models.deeplabv2 import DeepLabV2, ResNetV1c
from semiseg.models.segformer import DAFormer, MiT

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_daformer import (  # noqa: E402
    MIT_B0,
    public_daformer_head,
    public_dlv2_head,
    public_mit,
    public_mit_names,
    public_resnet_v1c_names,
)


def tiny_daformer(pretrained="scratch", classes=5):
    return DAFormer(classes, "mit_b0", pretrained, embed_dim=16, channels=8)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random (BatchNorm variances positive), so no term can hide behind a 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.2)  # fmt: skip
    return module


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])
def test_daformer_gives_logits_at_the_input_size_and_four_stage_features(size):
    model = tiny_daformer().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = model.backbone(x)
        assert model(x).shape == (2, 5, *size)
    assert [f.shape[1] for f in features] == MIT_B0["dims"]
    assert features[0].shape[-2:] == (-(-size[0] // 4), -(-size[1] // 4))


def test_deeplabv2_gives_logits_at_the_input_size_from_stride_8():
    model = DeepLabV2(5, "resnet50_v1c", "scratch").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.backbone(x)
        assert model(x).shape == (1, 5, 64, 96)
    assert [tuple(f.shape[1:]) for f in features] == [
        (256, 16, 24), (512, 8, 12), (1024, 8, 12), (2048, 8, 12),
    ]  # fmt: skip


def test_resnet_v1c_dilations_are_mmseg_contract_dilation():
    """strides (1, 2, 1, 1), dilations (1, 1, 2, 4), a dilated stage's first block at half."""
    net = ResNetV1c("resnet50_v1c")
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        assert layer[0].conv2.dilation == (dilation // 2,) * 2
        assert all(b.conv2.dilation == (dilation,) * 2 for b in list(layer)[1:])
        assert all(b.conv2.stride == (1, 1) for b in layer)
    assert net.layer2[0].conv2.stride == (2, 2)  # style='pytorch': the stride on the 3x3 conv
    assert [m.out_channels for m in net.stem if isinstance(m, torch.nn.Conv2d)] == [32, 32, 64]


# ---------------------------------------------------------------- the public layouts


@pytest.mark.parametrize("name", ["mit_b0", "mit_b5"])
def test_mit_tensors_carry_the_public_names(name):
    depths = {"mit_b0": MIT_B0["depths"], "mit_b5": [3, 6, 40, 3]}[name]
    encoder = MiT(name)
    assert set(encoder.state_dict()) == public_mit_names(depths)


def test_public_mit_file_loads_into_every_tensor_and_forwards_as_the_public_code(tmp_path):
    reference = randomise(MiT("mit_b0"))
    state = dict(reference.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": state}, path)  # the layout mmseg's mit_b*.pth files use
    model = tiny_daformer(pretrained=str(path)).eval()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = public_mit(state, x, MIT_B0["dims"], MIT_B0["depths"], MIT_B0["heads"])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_resnet_v1c_tensors_carry_mmseg_names_and_its_file_loads(tmp_path):
    with torch.device("meta"):
        names = set(ResNetV1c("resnet101_v1c").state_dict())
    names = {n for n in names if not n.endswith("num_batches_tracked")}
    assert names == public_resnet_v1c_names((3, 4, 23, 3))
    reference = randomise(ResNetV1c("resnet50_v1c"))
    state = {k: v for k, v in reference.state_dict().items() if "num_batches" not in k}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "resnet50_v1c.pth"
    torch.save({"state_dict": state}, path)
    model = DeepLabV2(5, "resnet50_v1c", str(path))
    for key, value in model.backbone.state_dict().items():
        if "num_batches" not in key:
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("model", ["daformer", "deeplabv2"])
def test_a_missing_or_mismatching_weights_file_is_one_line(tmp_path, model):
    build = {
        "daformer": lambda p: tiny_daformer(pretrained=p),
        "deeplabv2": lambda p: DeepLabV2(5, "resnet50_v1c", p),
    }[model]
    with pytest.raises(ConfigError) as err:
        build(str(tmp_path / "absent.pth"))
    assert "no such file" in str(err.value) and "\n" not in str(err.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"patch_embed1.proj.weight": torch.zeros(1), "stem.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError) as err:
        build(str(wrong))
    assert str(wrong) in str(err.value) and "missing" in str(err.value)
    assert "\n" not in str(err.value)


def test_imagenet_without_the_file_names_the_public_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        DAFormer(5, "mit_b0", "imagenet", str(tmp_path))
    assert "mit_b0.pth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        DeepLabV2(5, "resnet101_v1c", "imagenet", str(tmp_path))
    assert "resnet101_v1c-e67eebb6.pth" in str(err.value)


# ---------------------------------------------------------------- heads against the transcription


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])
def test_daformer_head_matches_the_public_forward(size):
    model = randomise(tiny_daformer()).eval()
    head_state = model.decode_head.state_dict()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = model.backbone(x)
        ours = model.decode_head(features)
        theirs = public_daformer_head(head_state, features)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        # EncoderDecoder's final resize: bilinear, align_corners=False, to the input size.
        expected = F.interpolate(theirs, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dilations", [(6, 12), (6, 12, 18, 24)])
def test_dlv2_head_matches_the_public_forward(dilations):
    model = DeepLabV2(5, "resnet50_v1c", "scratch", dilations=dilations)
    model = randomise(model).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        last = model.backbone(x)[-1]
        theirs = public_dlv2_head(model.decode_head.state_dict(), last, dilations)
        expected = F.interpolate(theirs, size=(64, 80), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
