"""optim.nesterov and optim.min_lr (the public CSS code's SGD and PolyLR): the momentum rule a
Nesterov step follows, by hand, and the poly schedule's floor."""

import pytest
import torch
from test_clipping import TinyNet

from semiseg.methods.supervised import Supervised

OPTIM = {"lr": 0.01, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0,
         "poly_power": 0.9, "clip_grad": None}  # fmt: skip


class FixedLength(Supervised):
    total_steps = 100  # no Trainer: the schedule's length by hand


def _module(**optim):
    torch.manual_seed(0)
    return FixedLength(
        model=TinyNet(),
        class_names=["a", "b"],
        optim={**OPTIM, **optim},
        evaluation={"mode": "original"},
        crop_size=16,
    )


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_with_or_without_nesterov_momentum(nesterov):
    module = _module(nesterov=nesterov)
    optimizer = module.configure_optimizers()
    weight = module.model.head.bias
    start = weight.detach().clone()
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])]
    for grad in grads:
        weight.grad = grad.clone()
        optimizer.step()
    # buffer b1 = g1, b2 = 0.9 b1 + g2; plain steps by b, Nesterov's by g + 0.9 b
    b1, b2 = grads[0], 0.9 * grads[0] + grads[1]
    steps = (grads[0] + 0.9 * b1, grads[1] + 0.9 * b2) if nesterov else (b1, b2)
    assert torch.allclose(weight.detach(), start - 0.01 * (steps[0] + steps[1]), atol=1e-7)


def test_min_lr_floors_the_poly_schedule():
    module = _module(min_lr=1e-4)
    optimizer = module.configure_optimizers()
    module.poly_update(optimizer, 10)  # 0.01 x 0.9^0.9 = 0.00909: above the floor
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.9**0.9)
    module.poly_update(optimizer, 99)  # 0.01 x 0.01^0.9 = 1.6e-4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.01**0.9)
    module.poly_update(optimizer, 100)  # 0 without the floor
    assert optimizer.param_groups[0]["lr"] == 1e-4
    plain = _module()
    optimizer = plain.configure_optimizers()
    plain.poly_update(optimizer, 100)
    assert optimizer.param_groups[0]["lr"] == 0.0
