"""The first run's pieces: `trainer.precision=fast` and the reference line printed at the end."""

import os
import subprocess

import torch
from cli import REPO
from hydra import compose, initialize_config_dir

from semiseg import hardware
from semiseg.run.results import versus_reference


def test_fast_precision_follows_the_hardware(monkeypatch):
    amx = torch.cpu.get_capabilities().get("amx_bf16", False)
    assert hardware.resolve_precision("fast", on_gpu=False) == ("bf16-mixed" if amx else "32-true")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False})
    assert hardware.resolve_precision("fast", on_gpu=False) == "32-true"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert hardware.resolve_precision("fast", on_gpu=False) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert hardware.resolve_precision("fast", on_gpu=True) == "16-mixed"
    for explicit in ("32-true", "bf16-mixed", "16-mixed", 32):
        assert hardware.resolve_precision(explicit, on_gpu=False) == explicit


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


def test_first_run_composes_unimatch_on_split_10_with_a_reference():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=first_run"])
    assert cfg.method.name == "unimatch" and cfg.split == 10 and cfg.dataset.name == "toy"
    assert cfg.trainer.precision == "fast" and cfg.data.batch_size == 4
    assert cfg.reference.method == "supervised" and cfg.reference.best_val_miou > 0
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
