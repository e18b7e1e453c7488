import pytest
import torch

from semiseg.models import DeepLabV3Plus


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
    with pytest.raises(RuntimeError, match="unexpected"):
        DeepLabV3Plus(num_classes=3, encoder="resnet18", pretrained=str(tmp_path / "full.pth"))
    torch.save(source.backbone.state_dict(), tmp_path / "backbone.pth")
    model = DeepLabV3Plus(
        num_classes=3, encoder="resnet18", pretrained=str(tmp_path / "backbone.pth")
    )
    assert torch.equal(model.backbone.conv1[0].weight, source.backbone.conv1[0].weight)
