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
