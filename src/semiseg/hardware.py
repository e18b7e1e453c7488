"""What this machine runs fast: the choice behind `trainer.precision=fast`.

bf16 autocast is the fast path where the hardware multiplies bf16 natively: GPUs that support it
(Ampere and later) and CPUs with AMX (about 3x a UniMatch step against fp32, README 'Speed').
Elsewhere bf16 is emulated and slower than fp32, so `fast` keeps fp32 there (16-mixed on GPUs
without bf16, whose tensor cores run fp16).
"""

from __future__ import annotations

import torch

FAST = "fast"


def has_fast_bf16(on_gpu: bool) -> bool:
    if on_gpu:
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu.get_capabilities().get("amx_bf16", False))


def resolve_precision(precision, on_gpu: bool):
    """`trainer.precision` for Lightning: `fast` becomes this machine's fastest setting (see the
    module docstring); any other value is returned as it is."""
    if str(precision) != FAST:
        return precision
    if has_fast_bf16(on_gpu):
        return "bf16-mixed"
    return "16-mixed" if on_gpu else "32-true"
