"""optim.clip_grad under manual optimization: the clipped norm is that of the true gradients
whatever the precision (16-mixed scales the loss; clipping before unscaling would be wrong)."""

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader

from semiseg.methods.base import SemiSegModule

# tests/ itself: this module is also imported by fst_ddp_worker.py, run by torchrun
sys.path.insert(0, str(Path(__file__).parents[1]))
from trainers import quiet_trainer  # noqa: E402

CLIP = 0.5


class TinyNet(nn.Module):
    """A 3x3 conv backbone (optionally with BatchNorm statistics to move) and a 1x1 head."""

    def __init__(self, classes: int = 2, batch_norm: bool = False):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        if batch_norm:
            self.backbone = nn.Sequential(self.backbone, nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.head.parameters()


class Recording(SemiSegModule):
    """Big gradients (loss x 1000), and the gradient norm seen right after clipping."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norms = []

    def training_losses(self, batch):
        logits = self.model(batch.labeled.image)
        return {"loss": 1000.0 * self.labeled_loss(logits, batch.labeled.mask)}

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        grads = [p.grad.float().norm() for p in self.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randn(3, 16, 16, generator=g), "mask": torch.randint(0, 2, (16, 16))}
        for _ in range(2 * n)
    ]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_clip_grad_bounds_true_gradient_norm(precision):
    torch.manual_seed(0)
    module = Recording(
        model=TinyNet(),
        class_names=["a", "b"],
        optim={
            "lr": 0.01,
            "lr_multi": 1.0,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "poly_power": 0.9,
            "clip_grad": CLIP,
        },
        evaluation={"mode": "original"},
        crop_size=16,
    )
    kwargs = {"precision": precision}
    if precision == "16-mixed":
        # Lightning swaps 16-mixed for bf16 on CPUs; pass the plugin to keep a real GradScaler.
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        kwargs = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}
    trainer = quiet_trainer(
        devices=1,
        max_steps=3,
        limit_val_batches=0,
        **kwargs,
    )
    if precision == "16-mixed":
        assert trainer.precision_plugin.scaler is not None
    trainer.fit(module, DataLoader(_batches(), batch_size=2))
    assert trainer.global_step == 3
    finite = [n for n in module.norms if n == n and n != float("inf")]
    assert finite, module.norms
    # Unclipped, these gradients have norms in the hundreds; clipped after unscaling, exactly CLIP.
    for norm in finite:
        assert norm == pytest.approx(CLIP, rel=1e-3)
