"""CSS's representation head: built on request, returned by name, invisible to every other caller."""

import pytest
import torch

from semiseg.models import DeepLabV3Plus


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepLabV3Plus(num_classes=5, encoder="resnet18", representation_dim=16)


def test_named_outputs(model):
    model.train()
    out = model(torch.randn(2, 3, 65, 97), outputs=("logits", "features", "representation"))
    assert out["logits"].shape == (2, 5, 65, 97)
    # the decoder's concatenation (48 + 256) and the head on it, both at stride 4
    assert out["features"].shape == (2, 304, 17, 25)
    assert out["representation"].shape == (2, 16, 17, 25)
    assert set(model(torch.randn(2, 3, 64, 64), outputs=("logits",))) == {"logits"}


def test_logits_are_the_plain_forwards(model):
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, outputs=("logits",))["logits"], model(x))


def test_head_as_the_public_code():
    # 304 -> 3x3 conv 256 (no bias), BN, ReLU -> 1x1 conv dim (bias), beside the classifier
    plain = DeepLabV3Plus(num_classes=5, encoder="resnet18")
    with_head = DeepLabV3Plus(num_classes=5, encoder="resnet18", representation_dim=256)
    extra = sum(p.numel() for p in with_head.parameters()) - sum(
        p.numel() for p in plain.parameters()
    )
    assert extra == 304 * 256 * 9 + 2 * 256 + 256 * 256 + 256
    head = dict(with_head.named_parameters())
    assert "representation.0.0.weight" in head and "representation.1.bias" in head
    # in the head group of the optimizer (lr x lr_multi), as the rest of the decoder
    ids = {id(p) for p in with_head.head_parameters()}
    assert all(id(p) in ids for p in with_head.representation.parameters())
    # no head, no keys: other methods' checkpoints are unchanged
    assert plain.representation is None
    assert not any(k.startswith("representation") for k in plain.state_dict())


def test_requests_that_cannot_be_served():
    plain = DeepLabV3Plus(num_classes=5, encoder="resnet18")
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="no representation head"):
        plain(x, outputs=("representation",))
    with pytest.raises(ValueError, match="unknown outputs"):
        plain(x, outputs=("logits", "probs"))
    with pytest.raises(ValueError, match="cannot be combined"):
        plain(x, feature_perturbation=True, outputs=("logits",))
    plain.train()
    logits, logits_fp = plain(x, feature_perturbation=True)  # UniMatch's path, unchanged
    assert logits.shape == logits_fp.shape == (2, 5, 64, 64)


def test_xception_encoder_with_head():
    torch.manual_seed(0)
    model = DeepLabV3Plus(num_classes=3, encoder="xception65", representation_dim=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), outputs=("logits", "representation"))
    assert out["logits"].shape == (1, 3, 64, 64) and out["representation"].shape[:2] == (1, 8)
