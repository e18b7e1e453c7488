"""The siamese DeepLabV3+ for change detection: one backbone on A and B, the decoder on the
absolute feature differences, the perturbed stream and CSS's outputs as DeepLabV3+'s."""

import pytest
import torch

from semiseg.errors import ConfigError
from semiseg.models.change import ChangeDeepLabV3Plus


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ChangeDeepLabV3Plus(2, encoder="resnet18", pretrained="scratch").eval()


def test_logits_at_input_size_and_the_perturbed_stream(model):
    pair = torch.randn(2, 6, 40, 48)
    with torch.no_grad():
        assert model(pair).shape == (2, 2, 40, 48)
        logits, logits_fp = model(pair, feature_perturbation=True)
    assert logits.shape == logits_fp.shape == (2, 2, 40, 48)
    assert not torch.equal(logits, logits_fp)


def test_the_order_of_the_pair_does_not_matter(model):
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ab, ba = model(torch.cat([a, b], 1)), model(torch.cat([b, a], 1))
    assert torch.allclose(ab, ba, atol=1e-5)  # |f(A) - f(B)| is symmetric


def test_an_unchanged_pair_is_judged_by_its_difference_only(model):
    a, c = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # A = B: zero differences, whatever the image
        assert torch.allclose(model(torch.cat([a, a], 1)), model(torch.cat([c, c], 1)))


def test_shares_one_backbone_and_keeps_deeplab_groups(model):
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert "backbone" in names and not any("backbone_b" in n for n in names)
    total = sum(p.numel() for p in model.parameters())
    split = sum(p.numel() for p in model.backbone_parameters()) + sum(
        p.numel() for p in model.head_parameters()
    )
    assert split == total


def test_representation_head_for_css():
    model = ChangeDeepLabV3Plus(2, encoder="resnet18", pretrained="scratch", representation_dim=8)
    out = model.eval()(torch.randn(2, 6, 32, 32), outputs=("logits", "representation"))
    assert out["logits"].shape == (2, 2, 32, 32) and out["representation"].shape[1] == 8


def test_refuses_single_images():
    with pytest.raises(ConfigError, match="6 channels"):
        ChangeDeepLabV3Plus(2, encoder="resnet18", pretrained="scratch", in_channels=3)
    model = ChangeDeepLabV3Plus(2, encoder="resnet18", pretrained="scratch")
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\) pairs"):
        model(torch.randn(1, 3, 32, 32))
