"""The public medical code's UNet and smp's UNet behind the interface every method uses."""

import pytest
import torch

from semiseg.models.unet import SmpUNet, UNet


@pytest.mark.parametrize("build", [lambda: UNet(4), lambda: SmpUNet(4)])
def test_logits_perturbed_stream_and_parameter_groups(build):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, 1, 64, 64)
    assert model(x).shape == (2, 4, 64, 64)
    logits, logits_fp = model(x, feature_perturbation=True)
    assert logits.shape == logits_fp.shape == (2, 4, 64, 64)
    assert not torch.allclose(logits, logits_fp)
    groups = [*model.backbone_parameters(), *model.head_parameters()]
    assert len(groups) == len(list(model.parameters()))
    assert {id(p) for p in groups} == {id(p) for p in model.parameters()}


def test_public_widths_and_odd_sizes():
    model = UNet(4).eval()
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs[::2]] == [16, 32, 64, 128, 256]
    assert model.decoder.classifier.kernel_size == (3, 3)
    assert model(torch.randn(1, 1, 36, 44)).shape == (1, 4, 36, 44)


def test_refuses_pretrained_weights_and_representation_head():
    with pytest.raises(ValueError, match="scratch"):
        UNet(4, pretrained="imagenet")
    with pytest.raises(ValueError, match="representation"):
        UNet(4, representation_dim=64)
