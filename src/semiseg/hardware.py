"""What this machine runs fast: the choice behind `trainer.precision=fast`.

bf16 autocast is the fast path where the hardware has native bf16 dot products:
- GPUs that support bf16 (Ampere and later);
- CPUs with AMX (`amx_bf16`, Intel Sapphire Rapids and later: about 3x a UniMatch step against
  fp32, README 'Speed') or with AVX-512 BF16 (`avx512_bf16`, e.g. AMD EPYC Zen 4 and later, Intel
  Cooper Lake: bf16 + channels_last ran the R101 UniMatch step 1.87x faster than fp32 on a 2-thread
  EPYC without AMX, 6.9 s against 12.9 s).
The CPU flags are the ones torch reports (`torch.cpu.get_capabilities()`). Elsewhere bf16 is
emulated and slower than fp32, so `fast` keeps fp32 there (16-mixed on GPUs without bf16, whose
tensor cores run fp16).
"""

from __future__ import annotations

import torch

FAST = "fast"
# Lightning's short spellings of trainer.precision, and the names they stand for.
PRECISION_NAMES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
# The CPU capabilities (torch.cpu.get_capabilities keys) that multiply bf16 natively.
NATIVE_BF16_CPU = ("amx_bf16", "avx512_bf16")


def has_fast_bf16(on_gpu: bool) -> bool:
    if on_gpu:
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return any(bool(capabilities.get(flag, False)) for flag in NATIVE_BF16_CPU)


def resolve_precision(precision, on_gpu: bool):
    """`trainer.precision` for Lightning: `fast` becomes this machine's fastest setting (see the
    module docstring); any other value is returned as it is."""
    if str(precision) != FAST:
        return precision
    if has_fast_bf16(on_gpu):
        return "bf16-mixed"
    return "16-mixed" if on_gpu else "32-true"


def precision_name(precision) -> str:
    """Lightning's full name of a trainer.precision value ("32" -> "32-true")."""
    text = str(precision)
    return PRECISION_NAMES.get(text, text)
