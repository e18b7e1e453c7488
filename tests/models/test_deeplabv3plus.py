import pytest
import torch

from semiseg.errors import ConfigError
from semiseg.models import DeepLabV3Plus
from semiseg.models.encoders import describe_init, imagenet_file, pretrained_file


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepLabV3Plus(num_classes=5, encoder="resnet18")


def count(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("size", [(65, 97), (64, 64)])
def test_output_matches_input_size(model, size):
    model.train()
    assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_large_and_odd_sizes_in_eval(model):
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 321, 321)).shape == (1, 5, 321, 321)
        assert model(torch.randn(1, 3, 375, 500)).shape == (1, 5, 375, 500)


def test_feature_perturbation(model):
    model.train()
    seen = []
    hook = model.fuse[0][1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    try:
        logits, logits_fp = model(torch.randn(2, 3, 65, 97), feature_perturbation=True)
    finally:
        hook.remove()
    assert logits.shape == logits_fp.shape == (2, 5, 65, 97)
    assert seen == [4]  # one decoder pass, BatchNorm sees clean and perturbed halves together
    assert not torch.allclose(logits, logits_fp)


def test_perturbation_active_in_eval(model):
    model.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        logits, logits_fp = model(x, feature_perturbation=True)
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert not torch.allclose(logits, logits_fp)


def test_parameter_groups_partition(model):
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    everything = [id(p) for p in model.parameters()]
    assert not backbone & head
    assert backbone | head == set(everything)
    assert count(model.backbone_parameters()) + count(model.head_parameters()) == count(
        model.parameters()
    )


@pytest.mark.parametrize("encoder, millions", [("resnet101", 59.5), ("resnet50", 40.5)])
def test_paper_parameter_counts(encoder, millions):
    model = DeepLabV3Plus(num_classes=21, encoder=encoder)
    assert count(model.parameters()) / 1e6 == pytest.approx(millions, rel=0.01)


def test_pretrained_path(tmp_path):
    source = DeepLabV3Plus(num_classes=3, encoder="resnet18")
    torch.save({"model": source.state_dict()}, tmp_path / "full.pth")
    # A whole segmentation checkpoint carries head keys: not a backbone file.
    with pytest.raises(ConfigError, match="unexpected"):
        DeepLabV3Plus(num_classes=3, encoder="resnet18", pretrained=str(tmp_path / "full.pth"))
    torch.save(source.backbone.state_dict(), tmp_path / "backbone.pth")
    model = DeepLabV3Plus(
        num_classes=3, encoder="resnet18", pretrained=str(tmp_path / "backbone.pth")
    )
    assert torch.equal(model.backbone.conv1[0].weight, source.backbone.conv1[0].weight)


def test_imagenet_files_follow_the_public_layout(tmp_path):
    assert imagenet_file("resnet101") == "resnet101.pth"
    assert imagenet_file("resnet50") == "resnet50.pth"
    assert imagenet_file("xception65") == imagenet_file("xception") == "xception.pth"
    assert pretrained_file("resnet101", "scratch", tmp_path) is None
    with pytest.raises(ConfigError) as err:
        pretrained_file("resnet101", "imagenet", tmp_path / "pretrained")
    message = str(err.value)
    assert f"no ImageNet weights for resnet101 at {tmp_path / 'pretrained' / 'resnet101.pth'}" in (
        message
    )
    assert "model.pretrained=scratch" in message and "\n" not in message
    (tmp_path / "resnet101.pth").write_bytes(b"weights")
    assert pretrained_file("resnet101", "imagenet", tmp_path) == tmp_path / "resnet101.pth"


def test_describe_init_records_the_file_and_its_hash(tmp_path):
    (tmp_path / "resnet18.pth").write_bytes(b"abc")
    assert describe_init("resnet18", "scratch", tmp_path) == {"backbone": "scratch"}
    # sha256("abc"), from the FIPS 180-2 test vectors
    assert describe_init("resnet18", "imagenet", tmp_path) == {
        "backbone": "imagenet",
        "file": str(tmp_path / "resnet18.pth"),
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }


def test_imagenet_init_loads_from_the_folder(tmp_path):
    source = DeepLabV3Plus(num_classes=3, encoder="resnet18")
    torch.save(source.backbone.state_dict(), tmp_path / "resnet18.pth")
    model = DeepLabV3Plus(
        num_classes=3, encoder="resnet18", pretrained="imagenet", pretrained_dir=str(tmp_path)
    )
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("multi_grid", [False, True])
def test_resnet_dilations_are_u2pls(output_stride, multi_grid):
    """Every 3x3 conv's dilation (and its size-keeping padding) as U2PL's `_make_layer`, with and
    without multi-grid (iMAS's Cityscapes ResNet-50), at both output strides."""
    from public_u2pl_model import public_block_dilations

    model = DeepLabV3Plus(3, "resnet50", output_stride=output_stride, multi_grid=multi_grid)
    replace = (False, output_stride == 8, True)
    expected = public_block_dilations(replace, multi_grid)
    for stage, dilations in enumerate(expected, start=1):
        blocks = getattr(model.backbone, f"layer{stage}")
        assert [b.conv2.dilation[0] for b in blocks] == dilations, stage
        assert [b.conv2.padding[0] for b in blocks] == dilations, stage
    if multi_grid:  # the grid itself, by hand: OS 16 -> 2, 4, 8; OS 8 -> 4, 8, 16
        assert expected[3] == ([2, 4, 8] if output_stride == 16 else [4, 8, 16])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 47)).shape == (1, 3, 33, 47)


def test_aux_head_is_u2pls_on_the_third_stage():
    """The aux head: U2PL's Aux_Module on the third stage's feature (1024 channels on ResNet-50),
    upsampled to the input with align_corners; same weights, same logits."""
    from public_u2pl_model import PublicAuxModule

    torch.manual_seed(0)
    model = DeepLabV3Plus(4, "resnet50", aux_head=True).eval()
    public = PublicAuxModule(1024, 4).eval()
    # ours: 0 = (conv, BN, ReLU), 1 = classifier; theirs: 0 conv, 1 BN, 2 ReLU, 3 classifier
    names = {"0.0": "0", "0.1": "1", "1": "3"}
    public.aux.load_state_dict(
        {
            names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v
            for k, v in model.aux.state_dict().items()
        }
    )
    x = torch.randn(2, 3, 41, 53)
    with torch.no_grad():
        out = model(x, outputs=("logits", "aux"))
        stage3 = model.backbone(x)[1]
        assert stage3.shape[1] == 1024 and stage3.shape[-1] == 4  # stride 16
        assert torch.allclose(out["aux"], public(stage3, x.shape[-2:]), atol=1e-5)
        assert torch.equal(out["logits"], model(x))  # the main logits as without "aux"
    assert model.aux[1].bias.shape == (4,) and model.aux[0][0].bias is None


def test_aux_head_and_multi_grid_refuse_other_encoders():
    with pytest.raises(ConfigError, match="model.multi_grid=true needs a bottleneck"):
        DeepLabV3Plus(3, "resnet18", multi_grid=True)
    with pytest.raises(ConfigError, match="model.aux_head=true needs a timm ResNet"):
        DeepLabV3Plus(3, "smp:resnet18", aux_head=True)
    with pytest.raises(ValueError, match="aux_head=True"):
        DeepLabV3Plus(3, "resnet18")(torch.randn(1, 3, 32, 32), outputs=("aux",))


def test_one_decoder_conv_is_the_css_classifier():
    """model.decoder_convs=1: the public CSS classifier, 304 -> 3x3 conv 256, BN, ReLU -> 1x1."""
    model = DeepLabV3Plus(3, "resnet18", decoder_convs=1)
    convs = [m for m in model.fuse.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(304, 256, (3, 3))]
    assert len(DeepLabV3Plus(3, "resnet18").fuse) == 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError, match="model.decoder_convs=3"):
        DeepLabV3Plus(3, "resnet18", decoder_convs=3)


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (62, 50)])
def test_stem_pool_ceil_is_u2pls_stem(size):
    """model.stem_pool_ceil: the deep stem and its max-pool as U2PL's resnet.py (ceil mode), same
    weights, same output, on sizes whose stem output is even (one more row and column than floor
    mode: 64 -> 32 -> 17) and odd; the stride-4 feature follows."""
    from public_u2pl_model import PublicDeepStem

    torch.manual_seed(0)
    model = DeepLabV3Plus(3, "resnet50", stem_pool_ceil=True).eval()
    backbone = model.backbone
    public = PublicDeepStem().eval()
    stem = {k: v for k, v in backbone.state_dict().items() if k.startswith(("conv1.", "bn1."))}
    public.load_state_dict(stem)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(x))))
        expected = public(x)
        assert torch.equal(ours, expected)
        rows = (size[0] + 1) // 2  # the stem's stride-2 conv
        assert expected.shape[-2] == (rows + 1) // 2 + (rows % 2 == 0)
        assert backbone(x)[0].shape[-2:] == expected.shape[-2:]  # layer1 keeps the size
        assert model(x).shape[-2:] == size
    floor = DeepLabV3Plus(3, "resnet50").backbone
    assert not floor.maxpool.ceil_mode  # UniMatch's ResNet: floor mode


def test_stem_pool_ceil_refuses_other_encoders():
    with pytest.raises(ConfigError, match="model.stem_pool_ceil=true needs a timm ResNet"):
        DeepLabV3Plus(3, "smp:resnet18", stem_pool_ceil=True)
