"""FST under the 16-mixed GradScaler: a step the scaler skips (inf gradients) must not move the
EMA teacher. The scaler skips in silence, so the virtual steps detect it by the scale it lowers
and abandon the iteration, as after NaN gradients."""

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from test_fst import _fit, _module


def test_fst_iteration_with_a_scaler_skipped_step_leaves_the_teacher_as_it_was():
    module = _module(k=3)
    teacher_before = {k: v.clone() for k, v in module.teacher.network.state_dict().items()}
    # The initial scale x any loss overflows fp16 gradients in the first virtual step; the
    # scaler skips that step and backs off to a scale that never overflows again.
    scaler = torch.amp.GradScaler("cpu", init_scale=1e30, backoff_factor=1e-40)
    trainer, states = _fit(module, steps=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert scaler.get_scale() < 1e30  # the scaler did skip
    first = states[0]  # after the first batch: the iteration with the skipped step
    assert first["ema_updates"] == 0 and first["global_step"] == 0
    for key, value in teacher_before.items():
        assert torch.equal(first["teacher"][key], value), key  # no EMA update after the skip
    assert module.nonfinite_steps == 1
    assert trainer.global_step == 2 and module.ema_updates == 2 * (3 + 2)  # then two iterations
