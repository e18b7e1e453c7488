"""Domain adaptation end to end on two generated domains: the toy (target: unlabeled and
validation images) and toy_shifted (source: labeled images, tinted warm so that no pixel is
blue over red). A real Trainer fit records what each stream delivers; train.py and eval.py run
the same setting from the command line."""

import json

import pytest
import torch
from cli import REPO, TINY, run_eval, run_script, train_on_toy
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from trainers import quiet_trainer

from semiseg.run.build import build_data_and_method

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def blue_over_red(images: torch.Tensor) -> list[float]:
    """Per image: the fraction of pixels clearly bluer than red (the source domain has none;
    the target's random background colours make it most of about half of its images)."""
    raw = images.float() * STD + MEAN
    return ((raw[:, 2] - raw[:, 0]) > 0.05).flatten(1).float().mean(1).tolist()


class Streams(Callback):
    def __init__(self):
        self.labeled, self.unlabeled, self.val = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.labeled += blue_over_red(batch["labeled"]["image"])
        self.unlabeled += blue_over_red(batch["unlabeled"]["weak"])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val += blue_over_red(batch["image"])


def test_labeled_batches_come_from_the_source_unlabeled_and_val_from_the_target(tmp_path, toy_root):
    source_root = tmp_path / "toy_shifted"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "method=meanteacher",
                "dataset=toy",
                "source=toy_shifted",
                f"dataset.root={toy_root}",
                f"source.root={source_root}",
                *TINY,
                "data.batch_size=4",
            ],
        )
    datamodule, module = build_data_and_method(cfg)  # generates toy_shifted on first use
    assert (source_root / "images" / "train_0000.png").is_file()
    assert datamodule.labeled_set.root == source_root
    assert datamodule.unlabeled_set.root == datamodule.val_set.root == toy_root

    streams = Streams()
    trainer = quiet_trainer(
        max_steps=3,
        val_check_interval=3,
        limit_val_batches=12,
        callbacks=[streams],
    )
    trainer.fit(module, datamodule=datamodule)
    assert len(streams.labeled) == len(streams.unlabeled) == 12 and len(streams.val) == 12
    assert max(streams.labeled) < 0.01  # every labeled image is a source (warm) image
    # target images: many are mostly blue over red (random backgrounds), none in the source
    # (the source has none such, so one is proof enough; a crop may miss the blue background)
    assert sum(f > 0.5 for f in streams.unlabeled) >= 1
    assert sum(f > 0.5 for f in streams.val) >= 1
    assert module.val_history and 0.0 <= module.val_history[-1]["miou"] <= 100.0


@pytest.mark.slow
def test_train_py_with_a_source_dataset(tmp_path, toy_root):
    run_dir = tmp_path / "run"
    proc = train_on_toy(
        toy_root,
        "method=meanteacher",
        "source=toy_shifted",
        f"source.root={tmp_path / 'toy_shifted'}",
        f"hydra.run.dir={run_dir}",
    )
    assert (
        "domain adaptation: 500 labeled images of toy_shifted" in proc.stdout
        and "500 unlabeled images of toy (split 20, labels unused)" in proc.stdout
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "toy" and results["source"] == "toy_shifted"
    assert results["steps"] == 3 and "miou_subsets" not in results
    # eval.py validates on the target, as training did
    proc = run_eval(run_dir, tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["dataset"] == "toy" and evaluated["num_images"] == 100
    assert evaluated["val_miou"] == pytest.approx(results["val_miou"], abs=0.01)


@pytest.mark.slow  # about 37 s on 2 cores; the check itself is held in process by tests/data
def test_bad_source_stops_train_py_with_one_line(tmp_path, toy_root):
    missing = tmp_path / "gta5"
    proc = run_script(
        "train.py",
        "dataset=cityscapes",
        f"dataset.root={toy_root}",
        "source=gta5",
        f"source.root={missing}",
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: source.root {missing} does not exist: point it at the gta5 dataset "
            "(source.root=DIR); expected layout: <root>/images/*.png and <root>/labels/*.png"
        )
    )
    assert "Traceback" not in proc.stderr
