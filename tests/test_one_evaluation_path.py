"""eval.py runs the validation code of training: for each task kind, a model trained one step
and validated, then its checkpoint scored by run/evaluate.py (what eval.py calls), in process.
Both go through the method's `validation_step` and the task's `predict` (counted by spies), and
give the same per-class scores."""

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).parent))
import layouts  # noqa: E402
from cli import REPO  # noqa: E402
from trainers import quiet_trainer  # noqa: E402

from semiseg.methods.base import SemiSegModule  # noqa: E402
from semiseg.run.build import build_data_and_method  # noqa: E402
from semiseg.run.evaluate import evaluate  # noqa: E402

SMALL = [
    "logger=none",
    "model.pretrained=scratch",
    "dataset.crop_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
]


def kinds(tmp_path_factory, toy_root):
    return {
        "segmentation": ["dataset=toy", f"dataset.root={toy_root}", "model.encoder=resnet18"],
        "volume": [
            "experiment=unimatch_acdc",
            f"dataset.root={layouts.acdc(tmp_path_factory.mktemp('acdc') / 'ACDC')}",
            "split=1",
        ],
        "change_detection": [
            "experiment=unimatch_whu_cd",
            "dataset.root="
            + str(layouts.change_detection(tmp_path_factory.mktemp("whu") / "WHU", "whu")),
            "split=5%",
            "model.encoder=resnet18",
        ],
    }


@pytest.fixture
def spies(monkeypatch):
    """Counts of validation_step calls and of the task's predict calls."""
    counts = {"validation_step": 0, "predict": 0}
    step = SemiSegModule.validation_step

    def counted_step(self, batch, batch_idx):
        counts["validation_step"] += 1
        predict = self.task.predict

        def counted_predict(*args, **kwargs):
            counts["predict"] += 1
            return predict(*args, **kwargs)

        self.task.predict = counted_predict
        try:
            return step(self, batch, batch_idx)
        finally:
            del self.task.predict

    monkeypatch.setattr(SemiSegModule, "validation_step", counted_step)
    return counts


def train_one_step(overrides, checkpoint: Path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *SMALL])
    datamodule, module = build_data_and_method(cfg)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = quiet_trainer(max_steps=1, val_check_interval=1, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(checkpoint)
    return module


def run_eval(checkpoint: Path, out: Path) -> dict:
    overrides = [f"ckpt_path={checkpoint}", "device=cpu"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return evaluate(cfg)


@pytest.mark.parametrize("kind", ["segmentation", "volume", "change_detection"])
def test_eval_runs_the_training_validation_and_scores_alike(
    kind, spies, tmp_path, tmp_path_factory, toy_root
):
    overrides = kinds(tmp_path_factory, toy_root)[kind]
    module = train_one_step(overrides, tmp_path / "last.ckpt")
    assert module.task.name == kind
    trained_steps, trained_predicts = spies["validation_step"], spies["predict"]
    assert trained_steps > 0 and trained_predicts >= trained_steps

    results = run_eval(tmp_path / "last.ckpt", tmp_path / "eval")
    evaluated_steps = spies["validation_step"] - trained_steps
    assert evaluated_steps == len(module.trainer.datamodule.val_set)  # every item, once
    # eval.py validates the chosen network only: one predict per item
    assert spies["predict"] - trained_predicts == evaluated_steps

    assert results["task"] == kind
    assert results["per_class_iou"] == module.last_state["per_class_iou"]
    assert results["val_miou"] == module.val_history[-1]["miou"]
    if kind == "volume":
        assert results["per_class_dice"] == module.last_state["per_class_dice"]
        assert results["per_volume_dice"] == module.last_state["per_volume_dice"]
    if kind == "change_detection":
        assert results["change_scores"] == module.last_state["change"]
