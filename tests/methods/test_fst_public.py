"""FST's semi-supervised step with its defaults against a transcription of the public
train_semi.py (tests/public_meanteacher.py, `public_fst_iteration`), in a real Trainer over
three iterations of two batches per epoch: epoch 0, where every loss's teacher is the student
(no look-ahead), then epoch 1, where the teacher runs ahead. The entropy for the drop comes from
a train-mode teacher forward on the student's batch, whose BatchNorm statistics are the
teacher's own (EMA of parameters only); every EMA update of an iteration shares one decay."""

import sys
from pathlib import Path

import pytest
import torch
from test_public_steps import (
    PER_EPOCH,
    STEPS,
    _fit,
    _module,
    _reference,
    _samples,
    assert_same_networks,
    box_rows_cols,
    recorded_returns,
)
from torch.utils.data import DataLoader

from semiseg.augment import mixing
from semiseg.methods.fst import FST

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_meanteacher import public_fst_iteration  # noqa: E402

K = 2


@pytest.mark.parametrize(
    "k, cutmix_p", [(K, 1.0), (K, 0.0), (0, 1.0)], ids=["look_ahead_mixed", "look_ahead", "k0"]
)
def test_fst_iterations_equal_the_public_train_semi(monkeypatch, k, cutmix_p):
    boxes = recorded_returns(monkeypatch, mixing, "half_area_boxes")
    module = _module(FST, k=k, base="cutmix", cutmix_p=cutmix_p, entropy_drop=0.2, weight_u=1.0)
    assert (module.teacher_entropy, module.teacher.average_buffers) == ("train_forward", "own")
    assert module.ema_warmup == "epoch"
    student, teacher, optimizer = _reference(module)
    record, losses = _fit(module, padded=False)

    draws = iter([box_rows_cols(b) for b in boxes] if cutmix_p else [])
    per_iteration = k + 1
    batches = list(DataLoader(_samples(padded=False), batch_size=2))
    for step in range(STEPS):
        public = public_fst_iteration(
            student, teacher, optimizer, record.lrs[step], batches[step % PER_EPOCH],
            step // PER_EPOCH, step, 0.9, draws if cutmix_p else iter(lambda: None, 0), k=k,
        )  # fmt: skip
        real = losses[per_iteration * (step + 1) - 1]["loss"]
        torch.testing.assert_close(real, public, rtol=1e-5, atol=1e-6)
        # buffers: the teacher's own
        assert_same_networks(record.states[step], student, teacher, every_entry=True)
    assert len(boxes) == (STEPS * per_iteration if cutmix_p else 0)
