"""The teacher-student foundation in a real Trainer: the EMA teacher follows every optimizer step
that changed the weights (and none the GradScaler skipped), stays out of the optimizer, and is the
network validated; each method trains end to end through train.py and eval.py."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision
from test_clipping import TinyNet, _batches
from torch.utils.data import DataLoader

from semiseg.methods.teacher_student import TeacherStudentModule
from semiseg.run.build import build_data_and_method

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, TINY, run_eval, train_on_toy  # noqa: E402
from trainers import quiet_trainer

from semiseg.data.batch import TrainBatch


class SupervisedTeacherStudent(TeacherStudentModule):
    """The foundation alone: a plain labeled loss, the teacher updated by the base."""

    def training_losses(self, batch):
        labeled = batch.labeled
        return {"loss": self.labeled_loss(self.model(labeled.image), labeled.mask)}


class StudentAfterEachStep(Callback):
    def __init__(self):
        self.students = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.students.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})


def _fit(module, steps, ckpt_path=None, callbacks=(), **trainer_kwargs):
    recorder = StudentAfterEachStep()
    trainer = quiet_trainer(
        max_steps=steps,
        limit_val_batches=0,
        callbacks=[recorder, *callbacks],
        **trainer_kwargs,
    )
    trainer.fit(module, DataLoader(_batches(4), batch_size=2), ckpt_path=ckpt_path)
    return recorder.students


def _module(cls=SupervisedTeacherStudent, alpha=0.99, **kwargs):
    torch.manual_seed(0)
    optim = {"lr": 0.1, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0,
             "poly_power": 0.9, "clip_grad": None}  # fmt: skip
    return cls(
        model=TinyNet(),
        class_names=["a", "b"],
        optim=optim,
        evaluation={"mode": "original"},
        crop_size=16,
        ema_alpha=alpha,
        **kwargs,
    )


def test_teacher_is_the_ema_of_the_students_after_each_step():
    module = _module(ema_warmup="ramp")
    students = _fit(module, steps=3)
    # decay 0, 1/2, 2/3 (min(1 - 1/(t + 1), 0.99)): worked out step by step
    key = "backbone.weight"
    expected = students[0][key]
    expected = 0.5 * expected + 0.5 * students[1][key]
    expected = (2 / 3) * expected + (1 / 3) * students[2][key]
    assert module.ema_updates == 3
    assert torch.allclose(module.teacher.network.state_dict()[key], expected, atol=1e-6)
    assert not torch.equal(students[0][key], students[2][key])  # the student did move


def test_public_warmup_copies_the_student_for_the_first_epoch_then_ramps_at_the_iteration():
    """iMAS/AugSeg train_semi.py: decay 0 while epoch 0 (4 steps here: 8 samples, batch 2), then
    min(1 - 1/(i_iter + 1), alpha) with i_iter the global iteration: 4/5 at the fifth step."""
    module = _module()
    assert module.ema_warmup == "epoch"
    key = "backbone.weight"
    students = _fit(module, steps=4)
    assert torch.equal(module.teacher.network.state_dict()[key], students[3][key])
    module = _module()
    students = _fit(module, steps=5)
    expected = (4 / 5) * students[3][key] + (1 / 5) * students[4][key]
    assert torch.allclose(module.teacher.network.state_dict()[key], expected, atol=1e-6)


def test_teacher_stays_out_of_the_optimizer_and_the_graph():
    module = _module()
    _fit(module, steps=1)
    optimized = {id(p) for group in module.optimizers().param_groups for p in group["params"]}
    teacher = list(module.teacher.parameters())
    assert teacher and not any(p.requires_grad for p in teacher)
    assert not optimized & {id(p) for p in teacher}
    assert module.networks() == {"student": "model", "teacher": "teacher.network"}
    assert module.eval_network is module.teacher.network  # validated by default, as iMAS/AugSeg


def test_no_teacher_update_for_a_step_the_grad_scaler_skipped():
    class Overflowing(SupervisedTeacherStudent):
        def training_losses(self, batch):
            # the first loss x 1e10, x the scaler's initial 1e30: fp16 gradients overflow
            losses = super().training_losses(batch)
            return {"loss": losses["loss"] * (1e10 if self.global_step == 0 else 1.0)}

    module = _module(Overflowing)
    scaler = torch.amp.GradScaler("cpu", init_scale=1e30, backoff_factor=1e-40)
    students = _fit(module, steps=3, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() < 1e30  # the scaler did skip (and backed off)
    assert torch.equal(students[0]["backbone.weight"], _module().model.backbone.weight)
    assert module.ema_updates == 2  # steps 2 and 3 only; the ramp starts at the first real one
    key = "backbone.weight"
    expected = 0.5 * students[1][key] + 0.5 * students[2][key]
    assert torch.allclose(module.teacher.network.state_dict()[key], expected, atol=1e-6)


@pytest.mark.parametrize("method", ["meanteacher", "imas", "augseg"])
def test_training_step_of_each_method(toy_root, method):
    """The real config and data module, one step by hand: every term finite, gradients reach the
    student and never the teacher."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"method={method}", f"dataset.root={toy_root}", *TINY])
    datamodule, module = build_data_and_method(cfg)
    batch = {k: next(iter(loader)) for k, loader in datamodule.train_dataloader().items()}
    module.train()
    losses = module.training_losses(TrainBatch.parse(batch))
    losses["loss"].backward()
    # U2PL's mean teacher has no threshold: it logs the share of pixels its entropy filter keeps
    ratio = "kept_ratio" if method == "meanteacher" else "mask_ratio"
    assert {"loss", "loss_x", "loss_u", ratio, "pseudo_acc"} <= set(losses)
    # pseudo_acc is NaN while no pixel is confident (a fresh model at tau 0.95): by design
    assert all(torch.isfinite(torch.as_tensor(v)) for k, v in losses.items() if k != "pseudo_acc")
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in module.teacher.parameters())


@pytest.mark.slow
def test_mean_teacher_trains_and_both_networks_are_evaluated(tmp_path, toy_root):
    run_dir = tmp_path / "run"
    train_on_toy(toy_root, "method=meanteacher", f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 3 and results["eval_network"] == "teacher"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["semiseg"]["ema_updates"] == 3
    assert any(k.startswith("teacher.network.") for k in checkpoint["state_dict"])
    # eval.py evaluates the teacher by default: the number training reported
    proc = run_eval(run_dir, tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["eval_network"] == "teacher"
    assert evaluated["val_miou"] == pytest.approx(results["val_miou"], abs=0.01)
    proc = run_eval(run_dir, tmp_path / "eval_student", "eval.model=student")
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = json.loads((tmp_path / "eval_student" / "results.json").read_text())
    assert student["eval_network"] == "student"
    # training validated the student too (eval.other_networks), with the same number
    last = results["val_history"][-1]
    assert set(last) == {"step", "miou", "miou_student"}
    assert student["val_miou"] == pytest.approx(last["miou_student"], abs=0.01)


class SaveAt(Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_resume_continues_the_teacher_exactly(tmp_path):
    # Saved at the end of the first epoch (4 batches): the resumed run sees the same batches.
    uninterrupted = _module()
    _fit(uninterrupted, steps=6, callbacks=[SaveAt(4, tmp_path / "step4.ckpt")])
    resumed = _module()
    _fit(resumed, steps=6, ckpt_path=str(tmp_path / "step4.ckpt"))
    assert resumed.ema_updates == uninterrupted.ema_updates == 6  # the ramp went on from t = 4
    for network in ("model", "teacher.network"):
        expected = uninterrupted.get_submodule(network).state_dict()
        for key, value in resumed.get_submodule(network).state_dict().items():
            assert torch.equal(value, expected[key]), (network, key)


@pytest.mark.parametrize(
    "method, paper_alpha", [("meanteacher", 0.99), ("imas", 0.996), ("augseg", 0.999)]
)
def test_the_toy_recipe_shortens_the_ema_horizon_and_nothing_else_does(method, paper_alpha):
    """conf/method_recipe/toy_<method>.yaml: alpha 0.99 on the toy only; any other dataset keeps
    the paper's value, and the command line still wins."""

    def alpha(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("train", overrides=[f"method={method}", *overrides]).method.ema_alpha

    assert alpha() == 0.99
    assert alpha("dataset=pascal") == paper_alpha
    assert alpha("method.ema_alpha=0.5") == 0.5
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        assert "ema_alpha" not in compose("train", overrides=["method=unimatch"]).method
