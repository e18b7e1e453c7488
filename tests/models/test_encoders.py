import pytest
import torch

from semiseg.errors import ConfigError
from semiseg.models.encoders import build_encoder, load_pretrained


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("resnet18")


def reference_layout(encoder):
    """A state dict as an ImageNet checkpoint of the reference stores it: backbone + fc."""
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in encoder.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    return state


def test_features_and_channels(encoder):
    low, high = encoder(torch.randn(2, 3, 65, 97))
    assert encoder.channels == (64, 512)
    assert low.shape == (2, 64, 17, 25)  # stride 4
    assert high.shape == (2, 512, 5, 7)  # stride 16


def test_deep_stem_names_match_reference_layout(encoder):
    keys = set(encoder.state_dict())
    for key in ["conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.6.weight"]:
        assert key in keys
    assert "bn1.weight" in keys and "layer4.1.conv2.weight" in keys
    assert encoder.state_dict()["conv1.6.weight"].shape == (128, 64, 3, 3)


def test_smp_encoder():
    encoder = build_encoder("smp:resnet18")
    low, high = encoder(torch.randn(2, 3, 64, 96))
    assert encoder.channels == (64, 512)
    assert low.shape[-2:] == (16, 24) and high.shape[-2:] == (4, 6)


@pytest.mark.parametrize("name", ["resnet_nope", "smp:resnet_nope"])
def test_unknown_encoder(name):
    with pytest.raises(ValueError, match="resnet_nope"):
        build_encoder(name)


def test_load_reference_layout(tmp_path, encoder):
    state = reference_layout(encoder)
    torch.save(state, tmp_path / "r18.pth")
    load_pretrained(encoder, tmp_path / "r18.pth")
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_load_prefixed_and_wrapped(tmp_path, encoder):
    state = reference_layout(encoder)
    wrapped = {"state_dict": {"module." + k: v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    load_pretrained(encoder, tmp_path / "wrapped.pth")
    assert torch.equal(
        encoder.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]
    )


def test_load_missing_key(tmp_path, encoder):
    state = reference_layout(encoder)
    del state["layer3.0.conv1.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"missing.pth.*1 missing \(layer3.0.conv1.weight\)"):
        load_pretrained(encoder, tmp_path / "missing.pth")


def test_load_unexpected_key(tmp_path, encoder):
    state = reference_layout(encoder)
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"1 unexpected \(layer5.0.conv1.weight\)"):
        load_pretrained(encoder, tmp_path / "extra.pth")


def test_load_wrong_shape(tmp_path, encoder):
    state = reference_layout(encoder)
    state["conv1.0.weight"] = torch.zeros(64, 3, 7, 7)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match=r"conv1\.0\.weight"):
        load_pretrained(encoder, tmp_path / "shape.pth")


def test_load_missing_file(tmp_path, encoder):
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained.*nowhere\.pth"):
        load_pretrained(encoder, tmp_path / "nowhere.pth")
