"""trainer.channels_last and trainer.compile observed on the networks, not read back from the
config: NHWC weights and NHWC inputs at every forward; networks compiled in place (state_dict
keys unchanged)."""

import pytest
import torch
from test_clipping import TinyNet

from semiseg.methods.base import SemiSegModule

OPTIM = {"lr": 0.01, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0, "poly_power": 0.9}


def _module(**switches):
    torch.manual_seed(0)
    return SemiSegModule(
        model=TinyNet(batch_norm=True), class_names=["a", "b"], optim=OPTIM,
        evaluation={"mode": "original"}, crop_size=8, **switches,
    )  # fmt: skip


@pytest.mark.parametrize("on", [True, False])
def test_channels_last_puts_weights_and_every_input_in_nhwc(on):
    module = _module(channels_last=on)
    module.setup("fit")
    seen = []
    module.model.backbone.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    module.model(torch.randn(2, 3, 8, 8))  # an NCHW batch, as the loaders give
    weight = module.model.backbone[0].weight  # 3x3, 3 -> 4 channels
    assert seen == [on]
    assert weight.is_contiguous(memory_format=torch.channels_last) is on
    assert weight.is_contiguous() is not on


@pytest.mark.parametrize("on", [True, False])
def test_compile_compiles_every_network_in_place(on):
    module = _module(compile=on)
    keys = list(module.state_dict())
    module.setup("fit")
    assert (module.model._compiled_call_impl is not None) is on
    assert list(module.state_dict()) == keys  # checkpoints load into uncompiled models
