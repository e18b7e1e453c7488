"""bench.vit_table=true: the settings it runs (each in its own process, two batch sizes) and the
largest batch per device it derives from the two peaks; the runs themselves are mocked here (one
real run of the bench is in tests/test_bench.py)."""

import pytest

from semiseg.errors import ConfigError
from semiseg.tools import bench_vit


def test_largest_batch_from_two_peaks_worked_by_hand():
    # 1 image: 3000 MB, 2 images: 5000 MB -> 2000 MB per image, 1000 MB fixed;
    # 24 GB = 24,576 MB: (24,576 - 1000) // 2000 = 11 images
    per_image, batch = bench_vit.largest_batch([1, 2], [3000, 5000], 24)
    assert (per_image, batch) == (2000, 11)
    # batches 2 and 4: 4000 and 7000 -> 1500 per image, 1000 fixed; 80 GB: 81,920 - 1000 = 80,920
    assert bench_vit.largest_batch([2, 4], [4000, 7000], 80) == (1500, 53)
    # a fixed part above the capacity fits nothing
    assert bench_vit.largest_batch([1, 2], [30_000, 31_000], 24)[1] == 0


def test_every_setting_runs_at_both_batches_with_its_overrides(monkeypatch, capsys):
    calls = []

    def fake_run(overrides):
        calls.append(overrides)
        batch = int(next(o for o in overrides if o.startswith("data.batch_size=")).split("=")[1])
        return {"peak_memory_mb": 1000 + 500 * batch, "step_s": 0.5, "device": "cpu", "threads": 1}

    monkeypatch.setattr(bench_vit, "_one_run", fake_run)
    rows = bench_vit.main(["trainer.precision=32"], {"encoders": "dinov2_small", "crop": "140"})
    assert len(rows) == 2 * 3 and len(calls) == 2 * 3 * 2  # precisions x settings, 2 batches
    first = calls[0]
    assert "model.encoder=dinov2_small" in first and "dataset.crop_size=140" in first
    assert "bench.precision=32" in first and "model.checkpointing=false" in first
    assert "trainer.precision=32" in first  # the user's overrides pass through
    checkpointed = [c for c in calls if "model.checkpointing=true" in c]
    frozen = [c for c in calls if "model.freeze_backbone=true" in c]
    assert len(checkpointed) == len(frozen) == 4
    assert rows[0]["peak_mb"] == [1500, 2000] and rows[0]["mb_per_image"] == 500
    assert rows[0]["max_batch_24gb"] == (24 * 1024 - 1000) // 500
    out = capsys.readouterr().out
    assert "| dinov2_small | 140 | bf16 | frozen | 0.5 | 1500 / 2000 | 500 | 47 / 79 / 161 |" in out


def test_bad_settings_are_one_line():
    with pytest.raises(ConfigError, match="two batch sizes"):
        bench_vit.main([], {"batches": "2"})
    with pytest.raises(ConfigError, match="unknown"):
        bench_vit.main([], {"settings": "plain,fp8"})
    with pytest.raises(ConfigError, match="bench.size is unknown"):
        bench_vit.main([], {"size": "1"})
