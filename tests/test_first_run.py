"""The first run's pieces: `trainer.precision=fast` and the reference line printed at the end."""

import os
import subprocess

import torch
from cli import REPO
from hydra import compose, initialize_config_dir

from semiseg import hardware
from semiseg.run.results import versus_reference


def test_fast_precision_follows_the_hardware(monkeypatch):
    caps = torch.cpu.get_capabilities()
    native = caps.get("amx_bf16", False) or caps.get("avx512_bf16", False)
    assert hardware.resolve_precision("fast", on_gpu=False) == (
        "bf16-mixed" if native else "32-true"
    )
    for flags, expected in [
        ({"amx_bf16": True, "avx512_bf16": False}, "bf16-mixed"),  # Intel with AMX
        ({"amx_bf16": False, "avx512_bf16": True}, "bf16-mixed"),  # AMD EPYC Zen 4: no AMX
        ({"amx_bf16": False, "avx512_bf16": False}, "32-true"),  # bf16 emulated: fp32
        ({"avx2": True}, "32-true"),  # a torch that reports neither key
    ]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        assert hardware.resolve_precision("fast", on_gpu=False) == expected, flags
    # a GPU: its own bf16 support decides, whatever the CPU has
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert hardware.resolve_precision("fast", on_gpu=True) == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    assert hardware.resolve_precision("fast", on_gpu=True) == "bf16-mixed"
    for explicit in ("32-true", "bf16-mixed", "16-mixed", 32):
        assert hardware.resolve_precision(explicit, on_gpu=False) == explicit


def test_this_torch_reports_the_bf16_flags():
    caps = torch.cpu.get_capabilities()
    for flag in hardware.NATIVE_BF16_CPU:
        assert flag in caps, flag


def test_versus_reference_line():
    reference = {
        "method": "supervised", "best_val_miou": 47.25, "split": 10, "steps": 800,
        "source": "stored run",
    }  # fmt: skip
    run = {"method": "unimatch", "best_val_miou": 54.0, "split": "10", "steps": 800}
    line = versus_reference(run, reference)
    assert line == "unimatch 54.00 vs supervised 47.25 (+6.75 mIoU); supervised: stored run"
    worse = versus_reference({**run, "best_val_miou": 40.0}, reference)
    assert "(-7.25 mIoU)" in worse and "not this run's setting" not in worse
    other = versus_reference({**run, "split": "20"}, reference)
    assert other.endswith("(measured at split 10, 800 steps: not this run's setting)")
    assert "not this run's setting" in versus_reference({**run, "steps": 100}, reference)
    assert "no validation" in versus_reference({**run, "best_val_miou": None}, reference)


def test_the_reference_is_of_the_precision_the_run_used():
    reference = {
        "method": "supervised", "split": 10, "steps": 800,
        "by_precision": {
            "bf16-mixed": {"best_val_miou": 38.78, "source": "bf16 run"},
            "32-true": {"best_val_miou": 33.77, "source": "fp32 run"},
        },
    }  # fmt: skip
    run = {"method": "unimatch", "best_val_miou": 44.0, "split": 10, "steps": 800}
    bf16 = versus_reference({**run, "precision": "bf16-mixed"}, reference)
    assert bf16 == "unimatch 44.00 vs supervised 38.78 (+5.22 mIoU); supervised: bf16 run"
    fp32 = versus_reference({**run, "precision": "32-true"}, reference)
    assert fp32 == "unimatch 44.00 vs supervised 33.77 (+10.23 mIoU); supervised: fp32 run"
    assert versus_reference({**run, "precision": "32"}, reference) == fp32  # Lightning's "32"
    fp16 = versus_reference({**run, "precision": "16-mixed"}, reference)
    assert fp16 == (
        "no stored supervised figure for 16-mixed (stored: bf16-mixed, 32-true): unimatch 44.00 "
        "is not compared across precisions"
    )
    assert "38.78" not in fp16 and "33.77" not in fp16


def test_first_run_composes_unimatch_on_split_10_with_a_reference():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=first_run"])
    assert cfg.method.name == "unimatch" and cfg.split == 10 and cfg.dataset.name == "toy"
    assert cfg.trainer.precision == "fast" and cfg.data.batch_size == 4
    assert cfg.reference.method == "supervised"
    figures = cfg.reference.by_precision
    assert set(figures) == {"bf16-mixed", "32-true"}  # what `fast` resolves to on CPUs
    for figure in figures.values():
        assert figure.best_val_miou > 0 and figure.source
    assert cfg.model.encoder == "resnet18"  # the toy recipe still applies


def _outside_make() -> dict:
    """The environment without an enclosing make's variables (`make test ARGS=...` hands its
    ARGS to every make below it through MAKEFLAGS)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def _make_train(*args: str) -> str:
    """The command `make train` runs (make -n: printed, not run; setup taken as done)."""
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", "setup", "-o", ".venv/.installed", "train", *args],
        cwd=REPO, capture_output=True, text=True, check=True, env=_outside_make(),
    )  # fmt: skip
    return next(line for line in proc.stdout.splitlines() if "train.py" in line)


def test_make_train_is_the_first_run_unless_args_say_otherwise():
    assert _make_train("ARGS=").endswith("train.py experiment=first_run")
    assert _make_train("ARGS=method=fixmatch split=20").endswith(
        "train.py method=fixmatch split=20"
    )
