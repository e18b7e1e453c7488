"""`python -m semiseg.tools.bench`: the model-compute replay, the profile, the memory format
choice."""

import pytest
from cli import TINY, run_script

from semiseg.errors import ConfigError
from semiseg.run.build import resolve_channels_last
from semiseg.tools import bench

ONE_STEP = ["bench.steps=1", "bench.warmup=0"]


@pytest.mark.parametrize(
    ("partner", "calls"),
    [
        ("same", 3),  # the partner's no-grad forward, labeled + weak (+ fp), both strong views
        ("flip", 2),  # the partner is the batch reversed: no forward of its own
    ],
)
def test_model_compute_replays_the_forwards_of_the_step(toy_root, partner, calls):
    report = bench.main(
        ["method=unimatch", f"method.mix_partner={partner}", f"dataset.root={toy_root}", *TINY]
        + ONE_STEP
    )
    assert report["model_forwards"] == calls
    assert report["compute_forwards_s"] > 0 and report["compute_backward_s"] > 0
    assert report["step_over_compute"] == pytest.approx(
        (report["step_s"] - report["data_s"]) / report["compute_s"], rel=0.01
    )
    # one step: the median of its own ratio is the same figure
    assert report["step_over_compute_median"] == pytest.approx(
        report["step_over_compute"], rel=0.01
    )


def test_replay_counts_the_teachers_forward(toy_root):
    report = bench.main(["method=meanteacher", f"dataset.root={toy_root}", *TINY] + ONE_STEP)
    # U2PL's mean teacher: the teacher's pseudo-labels, the student, the teacher's train-mode
    # forward whose entropy filters the loss
    assert report["model_forwards"] == 3


def test_profile_prints_the_top_ops_and_the_time_outside_the_model(toy_root, capsys):
    report = bench.main(
        ["method=unimatch", f"dataset.root={toy_root}", *TINY, "bench.profile=true"] + ONE_STEP
    )
    out = capsys.readouterr().out
    assert "Self CPU" in out and "aten::convolution" in report["profile"]
    assert "forward phase: model calls" in out and "outside the model" in out


@pytest.mark.parametrize(
    ("setting", "device", "half", "expected"),
    [
        ("auto", "cpu", False, True),  # oneDNN: NHWC measured faster in fp32 ...
        ("auto", "cpu", True, True),  # ... and in bf16
        ("auto", "cuda", False, False),  # cuDNN fp32: NCHW
        ("auto", "cuda", True, True),  # tensor-core bf16/fp16: NHWC
        ("auto", "mps", True, False),
        (True, "cuda", False, True),  # an explicit choice always wins
        ("false", "cpu", True, False),
        (False, "cpu", False, False),
    ],
)
def test_channels_last_auto_resolves_per_device_and_precision(setting, device, half, expected):
    assert resolve_channels_last(setting, device, half) is expected


def test_channels_last_refuses_other_values():
    with pytest.raises(ConfigError, match="true, false or auto"):
        resolve_channels_last("sometimes", "cpu", False)


def test_bench_follows_the_trainers_memory_format(toy_root):
    report = bench.main(["method=supervised", f"dataset.root={toy_root}", *TINY] + ONE_STEP)
    assert report["channels_last"] is True  # auto, on the CPU
    report = bench.main(
        ["method=supervised", f"dataset.root={toy_root}", *TINY, "trainer.channels_last=false"]
        + ONE_STEP
    )
    assert report["channels_last"] is False


@pytest.mark.slow
def test_compiled_model_benches_and_trains(tmp_path, toy_root):
    """trainer.compile reaches the bench and train.py (supervised: the fewest graphs to compile,
    a training and an evaluation one; compiling is minutes of CPU per graph)."""
    report = bench.main(
        ["method=supervised", f"dataset.root={toy_root}", *TINY, "bench.compile=true"] + ONE_STEP
    )
    assert report["compile"] is True and report["model_forwards"] == 1
    proc = run_script(
        "train.py", "method=supervised", f"dataset.root={toy_root}", *TINY,
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.compile=true",
        "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").exists()
