"""method=unimatch and method=fixmatch in a real Trainer against the public iterations written out
(tests/public_unimatch.py, tests/public_fixmatch.py): two training steps on a tiny network with
BatchNorm, fixed views, CutMix boxes (one empty), padding and dropout seeds give bitwise the same
loss terms, weights, BatchNorm statistics and momentum buffers. The threshold is set to a
confidence the step really produces, so a pixel sits exactly on it (kept: conf >= tau)."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from semiseg.methods.fixmatch import FixMatch
from semiseg.methods.unimatch import UniMatch

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_fixmatch import public_fixmatch_iteration  # noqa: E402
from public_unimatch import public_poly, public_sgd, public_unimatch_iteration  # noqa: E402
from trainers import quiet_trainer  # noqa: E402

SIZE, CLASSES, STEPS, BATCH = 16, 3, 2, 2
LR, LR_MULTI = 0.05, 10.0
OPTIM = {"lr": LR, "lr_multi": LR_MULTI, "momentum": 0.9, "weight_decay": 1e-4,
         "poly_power": 0.9, "clip_grad": None}  # fmt: skip
SEEDS = [11, 12]  # the global generator at the start of each step (feature dropout)


class TinyFPNet(nn.Module):
    """DeepLabV3+ in miniature: a stride-1 and a stride-2 feature with BatchNorm, fused by a
    head with BatchNorm. `forward(x, True)` perturbs both features with Dropout2d(0.5) (the low
    one first) and decodes clean and perturbed halves as one batch, as the public model."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleDict(
            {
                "low": nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                "high": nn.Sequential(
                    nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU()
                ),
            }
        )
        self.head = nn.Sequential(
            nn.Conv2d(10, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, CLASSES, 1)
        )

    def forward(self, x, feature_perturbation=False):
        low = self.backbone["low"](x)
        high = self.backbone["high"](low)
        if feature_perturbation:
            low = torch.cat((low, F.dropout2d(low, 0.5, training=True)))
            high = torch.cat((high, F.dropout2d(high, 0.5, training=True)))
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        logits = self.head(torch.cat((low, high), dim=1))
        return logits.chunk(2) if feature_perturbation else logits

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.head.parameters()


def _samples(n=STEPS * BATCH):
    """Per image: labeled image and mask (bottom rows padded on the first), unlabeled weak and
    two strong views with their boxes (image 1's second box is empty), the partner's views
    (its padding inside image 0's first box)."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        mask = torch.randint(0, CLASSES, (SIZE, SIZE), generator=g)
        ignore, mix_ignore = torch.zeros(SIZE, SIZE), torch.zeros(SIZE, SIZE)
        box1, box2 = torch.zeros(SIZE, SIZE), torch.zeros(SIZE, SIZE)
        box1[4 + i : 12, 3 : 10 + i] = 1
        if i % 2 == 0:
            box2[8:, 2:14] = 1
            mask[-3:] = 255
            ignore[-3:] = 255
            mix_ignore[6:9, :] = 255
        views = {k: torch.randn(3, SIZE, SIZE, generator=g) for k in ("weak", "strong1",
                 "strong2", "mix_weak", "mix_strong1", "mix_strong2")}  # fmt: skip
        unlabeled = {**views, "ignore": ignore.long(), "mix_ignore": mix_ignore.long(),
                     "box1": box1, "box2": box2, "gt": torch.full((SIZE, SIZE), 255)}  # fmt: skip
        image = torch.randn(3, SIZE, SIZE, generator=g)
        samples.append({"labeled": {"image": image, "mask": mask}, "unlabeled": unlabeled})
    return samples


def _batches():
    return list(DataLoader(_samples(), batch_size=BATCH))


class Seeded(Callback):
    """Seeds the global generator before each step, and records the step's loss terms."""

    def __init__(self):
        self.losses = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(SEEDS[batch_idx])
        original = pl_module.training_losses

        def recorded(b):
            out = original(b)
            self.losses.append({k: v.detach().clone() for k, v in out.items()})
            return out

        pl_module.training_losses = recorded

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        del pl_module.training_losses  # back to the class's method


def _public_run(model, iteration, tau):
    model = copy.deepcopy(model)
    optimizer = public_sgd(model, LR, LR_MULTI)
    losses = []
    for i, batch in enumerate(_batches()):
        torch.manual_seed(SEEDS[i])
        losses.append(iteration(model, optimizer, batch, tau))
        public_poly(optimizer, LR, LR_MULTI, iters=i, total_iters=STEPS)
    return model, optimizer, losses


def _tie_threshold(model, iteration):
    """A confidence of the first step's weak view, outside the first box and the padding:
    with it as the threshold, that pixel is exactly on it."""
    first = _batches()[0]
    torch.manual_seed(SEEDS[0])
    conf = iteration(
        copy.deepcopy(model), public_sgd(copy.deepcopy(model), LR, LR_MULTI), first, 0.5
    )
    u = first["unlabeled"]
    return float(conf["conf_w"][(u["box1"] == 0) & (u["ignore"] != 255)].median())


CASES = {
    "unimatch": (UniMatch, public_unimatch_iteration, ("loss_x", "loss_s1", "loss_s2", "loss_fp")),
    "fixmatch": (FixMatch, public_fixmatch_iteration, ("loss_x", "loss_s")),
}


@pytest.mark.parametrize("method", CASES)
def test_two_steps_equal_the_public_iterations(method):
    cls, public_iteration, terms = CASES[method]
    torch.manual_seed(0)
    network = TinyFPNet()
    tau = _tie_threshold(network, public_iteration)
    module = cls(
        model=copy.deepcopy(network), class_names=list("abc"), optim=OPTIM,
        evaluation={"mode": "original"}, crop_size=SIZE, tau=tau,
    )  # fmt: skip
    seeded = Seeded()
    trainer = quiet_trainer(max_steps=STEPS, limit_val_batches=0, callbacks=[seeded])
    trainer.fit(module, DataLoader(_samples(), batch_size=BATCH))
    assert trainer.global_step == STEPS

    public_model, public_optimizer, public_losses = _public_run(network, public_iteration, tau)
    for ours, theirs in zip(seeded.losses, public_losses, strict=True):
        for key in ("loss", *terms):
            assert torch.equal(ours[key], theirs[key]), (key, ours[key], theirs[key])
        # logged only: a float32 ratio here, a Python division there
        assert float(ours["mask_ratio"]) == pytest.approx(theirs["mask_ratio"], rel=1e-6)
        assert 0 < theirs["mask_ratio"] < 1  # the threshold splits the pixels
        assert all(float(ours[k]) > 0 for k in terms)  # every term has confident pixels
    # weights, BatchNorm statistics (the partner's eval forward moves none) and momentum
    ours_state, theirs_state = module.model.state_dict(), public_model.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for name in theirs_state:
        assert torch.equal(ours_state[name], theirs_state[name]), name
    ours_opt = module.optimizers().optimizer
    for ours_group, theirs_group in zip(
        ours_opt.param_groups, public_optimizer.param_groups, strict=True
    ):
        assert ours_group["lr"] == theirs_group["lr"]
        for p, q in zip(ours_group["params"], theirs_group["params"], strict=True):
            assert torch.equal(ours_opt.state[p]["momentum_buffer"],
                               public_optimizer.state[q]["momentum_buffer"])  # fmt: skip
    assert not torch.equal(ours_state["head.3.weight"], network.state_dict()["head.3.weight"])
