"""The data-only and evaluation benchmarks run end to end on tiny settings and report speeds."""

import pytest
from PIL import Image

from semiseg.errors import ConfigError
from semiseg.tools import bench, bench_data


def test_synthetic_images_have_the_papers_sizes(tmp_path):
    note = bench_data.write_synthetic(tmp_path, "pascal", count=5)
    assert "5 synthetic pascal-size images" in note
    with Image.open(tmp_path / "images" / "0000.jpg") as image:
        assert image.size == (500, 375)
    lists = tmp_path / "splits"
    assert len((lists / "bench" / "labeled.txt").read_text().split("\n")) - 1 == 2
    assert (lists / "bench" / "unlabeled.txt").read_text().split() == [
        "images/0002.jpg",
        "images/0003.jpg",
    ]
    assert (lists / "val.txt").read_text().split()[0] == "images/0004.jpg"


def test_data_bench_reports_items_per_worker_and_workers_per_gpu(capsys):
    tiny = ["bench.data_only=true", "bench.items=2", "bench.warmup=0", "bench.num_images=5"]
    report = bench.main([*tiny, "dataset.crop_size=64", "bench.gpu_step_s=0.5"])
    out = capsys.readouterr().out
    assert "items/s per worker" in out and "workers" in out
    assert report["crop"] == 64 and report["strong_views"] == "workers"
    assert report["unlabeled_items_per_s_per_worker"] > 0
    # six float32 views, three int64 masks, two uint8 boxes of 64 x 64
    assert report["unlabeled_item_mb"] == round((6 * 3 * 4 + 3 * 8 + 2) * 64 * 64 / 2**20, 1)
    assert report["labeled_items_per_s_per_worker"] > report["unlabeled_items_per_s_per_worker"]
    expected = (
        2 / report["labeled_items_per_s_per_worker"]
        + 2 / report["unlabeled_items_per_s_per_worker"]
    ) / 0.5
    assert abs(report["workers_per_gpu"] - expected) < 0.01 + 0.01 * expected

    # the strong views made in the step: the workers send weak views only
    report = bench.main([*tiny, "dataset.crop_size=64", "method.strong_views=step"])
    assert report["strong_views"] == "step"
    assert [v for k, v in report.items() if k.startswith("step_strong_ms_per_item_")][0] > 0


def test_eval_bench_times_a_tiny_sliding_window(capsys):
    report = bench.main(
        [
            "bench.eval=true",
            "model.encoder=resnet18",
            "dataset.crop_size=48",
            "bench.height=64",
            "bench.width=100",
            "bench.images=1",
            "eval.window_batch=3",
        ]
    )
    assert "images/s" in capsys.readouterr().out
    # truncate: rows 0, 32 x columns 0, 32, 64, 96 of stride 32
    assert report["windows"] == 8 and report["window_batch"] == 3
    assert report["images_per_s"] > 0 and report["peak_memory_mb"] > 0


def test_an_unknown_bench_key_is_named():
    with pytest.raises(ConfigError, match="bench.steps is unknown"):
        bench.main(["bench.data_only=true", "bench.steps=3"])
