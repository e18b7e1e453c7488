"""Whole training steps of iMAS and AugSeg in a real Trainer against transcriptions of their public
train_semi.py (tests/public_imas.py, tests/public_augseg.py): three iterations of two batches per epoch
(epoch 0, where the public teacher copies the student, then epoch 1, where it ramps), with the
random draws semiseg makes handed to the transcription; the losses, the student and the teacher
after each step must agree. The unlabeled crops carry padding, which the public code trains on."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_clipping import TinyNet
from torch.utils.data import DataLoader

from semiseg.augment import mixing
from semiseg.methods import imas as imas_module
from semiseg.methods.augseg import AugSeg
from semiseg.methods.imas import IMAS
from semiseg.methods.meanteacher import MeanTeacher

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_augseg import public_augseg_step  # noqa: E402
from public_imas import public_imas_step  # noqa: E402
from public_meanteacher import public_u2pl_step  # noqa: E402
from public_teacher_student import public_ema  # noqa: E402
from trainers import quiet_trainer  # noqa: E402

SIZE, TAU, ALPHA = 12, 0.4, 0.9
OPTIM = {"lr": 0.1, "lr_multi": 2.0, "momentum": 0.9, "weight_decay": 1e-3, "poly_power": 0.9,
         "clip_grad": None}  # fmt: skip


def _samples(n=4, padded=True):
    g = torch.Generator().manual_seed(3)
    samples = []
    for _ in range(n):
        mask = torch.randint(0, 3, (SIZE, SIZE), generator=g)
        mask[:, -2:] = 255  # padded labeled pixels
        ignore = torch.zeros(SIZE, SIZE, dtype=torch.long)
        if padded:  # padded unlabeled pixels: the public code has no such mask
            ignore[-3:, :] = 255
        samples.append(
            {
                "labeled": {"image": torch.randn(3, SIZE, SIZE, generator=g), "mask": mask},
                "unlabeled": {
                    "weak": torch.randn(3, SIZE, SIZE, generator=g),
                    "ignore": ignore,
                    "gt": torch.randint(0, 3, (SIZE, SIZE), generator=g),
                },
            }
        )
    return samples


def fixed_strong(u):
    """The strong view, fixed: a deterministic function of the weak one."""
    weak = u["weak"] if isinstance(u, dict) else u.weak  # the loader's dict, or the module's view
    return 0.6 * weak.flip(-1) + 0.3


def _module(cls, **kwargs):
    torch.manual_seed(0)
    module = cls(
        model=TinyNet(classes=3, batch_norm=True), class_names=["a", "b", "c"], optim=OPTIM,
        evaluation={"mode": "original"}, crop_size=SIZE, tau=TAU, ema_alpha=ALPHA, **kwargs,
    )  # fmt: skip
    if hasattr(module, "strong_view"):
        module.strong_view = fixed_strong
    return module


class Record(Callback):
    """The learning rates each step uses, and the networks after it."""

    def __init__(self):
        self.lrs, self.states = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in pl_module.optimizers().param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append(
            (
                copy.deepcopy(pl_module.model.state_dict()),
                copy.deepcopy(pl_module.teacher.network.state_dict()),
            )
        )


STEPS, PER_EPOCH = 3, 2


def _fit(module, steps=STEPS, padded=True):
    """`steps` iterations, two batches per epoch; returns the recorder and the losses dicts."""
    losses, step = [], module.training_losses

    def recorded(batch):
        out = step(batch)
        losses.append({k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()})
        return out

    module.training_losses = recorded
    record = Record()
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=[record])
    trainer.fit(module, DataLoader(_samples(padded=padded), batch_size=2))
    return record, losses


def _reference(module):
    student, teacher = copy.deepcopy(module.model), copy.deepcopy(module.teacher.network)
    groups = [
        {"params": list(student.backbone.parameters())},
        {"params": list(student.head.parameters())},
    ]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-3)
    return student, teacher, optimizer


def box_rows_cols(masks):
    """(row start, row end, col start, col end) of each image's box mask (an empty box: 0s)."""
    boxes = []
    for m in masks.cpu():
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        if len(rows) == 0:
            boxes.append((0, 0, 0, 0))
            continue
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        assert m[box[0] : box[1], box[2] : box[3]].all() and m.sum() == (
            (box[1] - box[0]) * (box[3] - box[2])
        )
        boxes.append(box)
    return boxes


def recorded_returns(monkeypatch, owner, name: str) -> list:
    """From here on, what `owner.name` returns at each call (semiseg's random draws, handed to
    the transcription)."""
    returns = []
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        returns.append(original(*args, **kwargs))
        return returns[-1]

    monkeypatch.setattr(owner, name, recorded)
    return returns


def assert_same_networks(state, student, teacher, every_entry=False):
    """The recorded (student, teacher) state dicts against the transcription's networks: their
    floating-point entries, or with `every_entry` the integer ones too (BatchNorm's counters)."""
    for got, want in zip(state, (student, teacher), strict=True):
        for key, value in want.state_dict().items():
            if every_entry or value.is_floating_point():
                torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("trigger_draws", [(0.0, 0.0, 0.0), (1.0, 0.0, 1.0)], ids=["mix", "plain"])
def test_imas_steps_equal_the_public_train_semi(monkeypatch, trigger_draws):
    draws = list(trigger_draws)
    monkeypatch.setattr(imas_module, "hard_cutmix_triggered", lambda e: draws.pop(0) < e.mean())
    boxes = recorded_returns(monkeypatch, mixing, "centred_boxes")
    module = _module(IMAS, weight_u=3.0)
    student, teacher, optimizer = _reference(module)
    record, losses = _fit(module)

    batches = list(DataLoader(_samples(), batch_size=2))
    for step in range(STEPS):
        batch = batches[step % PER_EPOCH]
        mixed = bool(losses[step]["cutmix"])
        box = box_rows_cols(boxes.pop(0)) if mixed else None
        public = public_imas_step(
            student, teacher, optimizer, record.lrs[step], batch,
            fixed_strong(batch["unlabeled"]), trigger_draws[step], box, TAU, 3.0,
        )  # fmt: skip
        assert public["cutmix"] == mixed
        torch.testing.assert_close(losses[step]["loss"], public["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses[step]["loss_x"], public["loss_x"])
        public_ema(teacher, student, step // PER_EPOCH, step, PER_EPOCH, ALPHA)
        assert_same_networks(record.states[step], student, teacher)
    assert losses[1]["cutmix"] == 1.0 and 0 < losses[1]["mask_ratio"] < 1


def test_augseg_steps_equal_the_public_train_semi(monkeypatch):
    draws = []
    original = mixing.inject_then_mix

    def recorded(batch, x, y, perm, box_l, inject, box_u):
        draws.append((perm.tolist(), inject.tolist(), box_rows_cols(box_l), box_rows_cols(box_u)))
        return original(batch, x, y, perm, box_l, inject, box_u)

    monkeypatch.setattr(mixing, "inject_then_mix", recorded)
    module = _module(AugSeg, weight_u=1.0)
    student, teacher, optimizer = _reference(module)
    torch.manual_seed(5)
    record, losses = _fit(module)

    batches = list(DataLoader(_samples(), batch_size=2))
    for step in range(STEPS):
        batch = batches[step % PER_EPOCH]
        perm, inject, box_l, box_u = draws[step]
        public = public_augseg_step(
            student, teacher, optimizer, record.lrs[step], batch,
            fixed_strong(batch["unlabeled"]), perm, inject, box_l, box_u, TAU, 1.0,
        )  # fmt: skip
        torch.testing.assert_close(losses[step]["reliability"], public["reliability"].mean())
        torch.testing.assert_close(losses[step]["loss"], public["loss"], rtol=1e-5, atol=1e-6)
        public_ema(teacher, student, step // PER_EPOCH, step, PER_EPOCH, ALPHA)
        assert_same_networks(record.states[step], student, teacher)
    assert any(any(d[1]) for d in draws), "no labeled box was injected: the draws test nothing"


@pytest.mark.parametrize("method", ["imas", "augseg"])
def test_imas_and_augseg_ask_for_the_mean_colour_padding_and_a_bad_fill_is_refused(method):
    from omegaconf import OmegaConf

    from semiseg.data.datamodule import SemiSegDataModule
    from semiseg.errors import ConfigError

    cls = {"imas": IMAS, "augseg": AugSeg}[method]
    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "method" / f"{method}.yaml")
    assert cls.data_requirements(cfg)["pad_fill"] == "mean"
    assert cfg.unlabeled_padding == "train"
    with pytest.raises(ConfigError, match=r"method.pad_fill='grey' is unknown: use one of zero"):
        SemiSegDataModule("root", "splits", "1", 32, pad_fill="grey")


@pytest.mark.parametrize("cutmix_p", [1.0, 0.0], ids=["mixed", "plain"])
def test_mean_teacher_steps_equal_u2pls_public_step(monkeypatch, cutmix_p):
    """U2PL's mean teacher: the teacher's parameters are the student's tensors in epoch 0 (here:
    every update of the first epoch copies), its entropy from a train-mode forward on the student's batch, its
    BatchNorm statistics its own; no padding here (semiseg leaves padded pixels out)."""
    boxes = recorded_returns(monkeypatch, mixing, "half_area_boxes")
    module = _module(MeanTeacher, cutmix_p=cutmix_p, ema_buffers="own", weight_u=1.0)
    assert module.style == "u2pl" and module.teacher_entropy == "train_forward"
    student, teacher, optimizer = _reference(module)
    record, losses = _fit(module, padded=False)

    batches = list(DataLoader(_samples(padded=False), batch_size=2))
    for step in range(STEPS):
        mixed = cutmix_p == 1.0
        box = box_rows_cols(boxes[step]) if mixed else None
        public = public_u2pl_step(
            student, teacher, optimizer, record.lrs[step], batches[step % PER_EPOCH],
            step // PER_EPOCH, step, mixed, box, ALPHA,
        )  # fmt: skip
        torch.testing.assert_close(losses[step]["loss"], public["loss"], rtol=1e-5, atol=1e-6)
        # buffers included: the teacher's own
        assert_same_networks(record.states[step], student, teacher, every_entry=True)
    assert len(boxes) == (STEPS if cutmix_p else 0)
