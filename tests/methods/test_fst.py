"""FST in a real Trainer, against a transcription by hand: one look-ahead (D) or averaged-future
(W) iteration gives bitwise the student and teacher that the public algorithm gives; virtual
steps move neither global_step nor the schedule, yet each is a backward pass the 16-mixed
scaler sees; a non-finite loss abandons the whole iteration; the CutMix mixing against the public
formula (the entropy filter and the box sampler: test_fst_losses.py); resume continues every counter."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from test_clipping import TinyNet
from torch import nn
from torch.utils.data import DataLoader

from semiseg.augment import mixing
from semiseg.methods.fst import FST

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, TINY, run_script  # noqa: E402
from trainers import quiet_trainer

from semiseg.data.batch import TrainBatch

K = 3
LR = 0.1
OPTIM = {"lr": LR, "lr_multi": 2.0, "momentum": 0.9, "weight_decay": 1e-3, "poly_power": 0.9,
         "clip_grad": None}  # fmt: skip


def TinyBNNet() -> nn.Module:  # noqa: N802 (used like the class it was)
    """A backbone with BatchNorm (statistics that the virtual steps move) and a 1x1 head."""
    return TinyNet(classes=3, batch_norm=True)


def _samples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labeled": {
                "image": torch.randn(3, 8, 8, generator=g),
                "mask": torch.randint(0, 3, (8, 8), generator=g),
            },
            "unlabeled": {
                "weak": torch.randn(3, 8, 8, generator=g),
                "ignore": torch.zeros(8, 8, dtype=torch.long),
                "gt": torch.randint(0, 3, (8, 8), generator=g),
            },
        }
        for _ in range(n)
    ]


def _module(cls=FST, **kwargs):
    torch.manual_seed(0)
    # The look-ahead mechanics against `Reference`: its teacher averages BatchNorm statistics and
    # ramps per update from the first one (the public teacher rules: test_fst_public.py).
    options = {"base": "meanteacher", "entropy_drop": 0.0, "k": K, "ema_alpha": 0.9,
               "ema_buffers": True, "ema_warmup": "ramp", "teacher_entropy": "pseudo_labels",
               **kwargs}  # fmt: skip
    return cls(
        model=TinyBNNet(), class_names=["a", "b", "c"], optim=OPTIM,
        evaluation={"mode": "original"}, crop_size=8, **options,
    )  # fmt: skip


class Snapshots(Callback):
    """Student, teacher and counters after every batch."""

    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append(
            {
                "student": copy.deepcopy(pl_module.model.state_dict()),
                "teacher": copy.deepcopy(pl_module.teacher.network.state_dict()),
                "ema_updates": pl_module.ema_updates,
                "global_step": trainer.global_step,
                "optimizer": copy.deepcopy(pl_module.optimizers().optimizer.state_dict()),
            }
        )


def _fit(module, steps, batch_size=2, n=8, ckpt_path=None, callbacks=(), val=False, **kwargs):
    snapshots = Snapshots()
    trainer = quiet_trainer(
        max_steps=steps, limit_val_batches=None if val else 0,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        callbacks=[snapshots, *callbacks], **kwargs,
    )  # fmt: skip
    loader = DataLoader(_samples(n), batch_size=batch_size)
    val_loader = DataLoader([{"image": s["unlabeled"]["weak"], "mask": s["unlabeled"]["gt"]}
                             for s in _samples(2, seed=1)], batch_size=1)  # fmt: skip
    trainer.fit(module, loader, val_loader if val else None, ckpt_path=ckpt_path)
    return trainer, snapshots.states


# ---------------------------------------------------------------------- the algorithm by hand


class Reference:
    """The public FST iteration written out: plain SGD, EMA with the ramp counted per update."""

    def __init__(self, module, alpha=0.9):
        self.student = copy.deepcopy(module.model)
        self.teacher = copy.deepcopy(module.model)
        self.alpha, self.updates = alpha, 0
        groups = [
            {"params": list(self.student.backbone.parameters()), "lr": LR},
            {"params": list(self.student.head.parameters()), "lr": LR * OPTIM["lr_multi"]},
        ]
        for g in groups:
            g["initial_lr"] = g["lr"]
        self.opt = torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=1e-3)

    @torch.no_grad()
    def ema(self):
        decay = min(1 - 1 / (self.updates + 1), self.alpha)
        self.updates += 1
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.lerp_(s, 1 - decay)
        for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            t.lerp_(s, 1 - decay) if t.is_floating_point() else t.copy_(s)

    def loss(self, batch):
        x, y, u = batch["labeled"]["image"], batch["labeled"]["mask"], batch["unlabeled"]["weak"]
        self.teacher.eval()
        with torch.no_grad():
            labels = self.teacher(u).softmax(1).max(1).indices
        logits = self.student(torch.cat((x, u)))
        loss_x = F.cross_entropy(logits[: len(x)], y, ignore_index=255)
        loss_u = F.cross_entropy(logits[len(x) :], labels, ignore_index=255) * torch.tensor(1.0)
        return loss_x + 1.0 * loss_u

    def step(self, batch):
        self.opt.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.opt.step()

    def snapshot(self):
        return (
            [p.detach().clone() for p in self.student.parameters()],
            [b.clone() for b in self.student.buffers()],
            copy.deepcopy(self.opt.state_dict()),
        )

    @torch.no_grad()
    def restore(self, saved, everything):
        for p, s in zip(self.student.parameters(), saved[0], strict=True):
            p.copy_(s)
        if everything:
            for b, s in zip(self.student.buffers(), saved[1], strict=True):
                b.copy_(s)
            self.opt.load_state_dict(copy.deepcopy(saved[2]))

    def iteration_d(self, batch, everything):
        saved = self.snapshot()
        for _ in range(K):
            self.ema()
            self.step(batch)
        self.ema()
        self.restore(saved, everything)
        self.step(batch)
        self.ema()

    def iteration_w(self, batch, everything):
        chunks = [
            {s: {k: v[i * 2 : (i + 1) * 2] for k, v in batch[s].items()} for s in batch}
            for i in range(K + 1)
        ]
        saved = self.snapshot()
        total = None
        for i in range(K):
            if i > 0:
                self.restore(saved, everything)
            self.step(chunks[i + 1])
            params = [p.detach().clone() for p in self.student.parameters()]
            total = params if total is None else [t + p for t, p in zip(total, params, strict=True)]
        with torch.no_grad():
            for p, t in zip(self.student.parameters(), total, strict=True):
                p.copy_(t / K)
        self.ema()
        self.restore(saved, everything)
        self.step(chunks[0])
        self.ema()

    def poly(self, iteration, total):
        for g in self.opt.param_groups:
            g["lr"] = g["initial_lr"] * max(0.0, 1.0 - iteration / total) ** 0.9


@pytest.mark.parametrize("variant", ["D", "W"])
@pytest.mark.parametrize("restore", ["parameters", "all"])
def test_iterations_equal_the_public_algorithm_by_hand(variant, restore):
    module = _module(variant=variant, restore=restore)
    reference = Reference(module)
    batch_size = 2 * (K + 1) if variant == "W" else 2
    trainer, states = _fit(module, steps=2, batch_size=batch_size, n=2 * batch_size)
    batches = list(DataLoader(_samples(2 * batch_size), batch_size=batch_size))
    for i, batch in enumerate(batches):
        (reference.iteration_d if variant == "D" else reference.iteration_w)(
            batch, restore == "all"
        )
        reference.poly(i, 2)
        state = states[i]
        for key, value in reference.student.state_dict().items():
            assert torch.equal(state["student"][key], value), (i, key)
        for key, value in reference.teacher.state_dict().items():
            assert torch.equal(state["teacher"][key], value), (i, "teacher", key)
        per_iteration = K + 2 if variant == "D" else 2
        assert state["ema_updates"] == reference.updates == per_iteration * (i + 1)
        assert state["global_step"] == i + 1  # the virtual steps are not counted
    lrs = [g["lr"] for g in module.optimizers().param_groups]
    assert lrs == [g["lr"] for g in reference.opt.param_groups]  # poly over 2 iterations


def test_restore_all_makes_the_final_step_one_plain_step_from_the_start():
    """With restore=all, the student after a D iteration is one plain SGD step from where the
    iteration began (fresh momentum, initial BatchNorm statistics), taught by the teacher the K
    virtual steps moved ahead."""
    module = _module(restore="all")
    start = copy.deepcopy(module.model)
    reference = Reference(module)
    _, states = _fit(module, steps=1)
    batch = next(iter(DataLoader(_samples(8), batch_size=2)))
    for _ in range(K):  # where the teacher stands before the real step
        reference.ema()
        reference.step(batch)
    reference.ema()
    plain = Reference(module)
    plain.student.load_state_dict(start.state_dict())
    plain.teacher.load_state_dict(reference.teacher.state_dict())
    plain.step(batch)
    for key, value in plain.student.state_dict().items():
        assert torch.equal(states[0]["student"][key], value), key


def test_k_0_is_the_baseline_one_step_one_ema_update():
    module = _module(k=0)
    reference = Reference(module)
    _, states = _fit(module, steps=2)
    for i, batch in enumerate(DataLoader(_samples(4), batch_size=2)):
        reference.step(batch)
        reference.ema()
        reference.poly(i, 2)
        for key, value in reference.student.state_dict().items():
            assert torch.equal(states[i]["student"][key], value), (i, key)
        for key, value in reference.teacher.state_dict().items():
            assert torch.equal(states[i]["teacher"][key], value), (i, "teacher", key)
    assert module.ema_updates == 2


class Counting(FST):
    backwards = 0

    def manual_backward(self, loss, *args, **kwargs):
        type(self).backwards += 1
        super().manual_backward(loss, *args, **kwargs)


class CountingScaler(torch.amp.GradScaler):
    def __init__(self):
        super().__init__("cpu")
        self.updates = 0

    def update(self, new_scale=None):
        self.updates += 1
        super().update(new_scale)


def test_schedule_validation_and_checkpoints_count_iterations(tmp_path):
    Counting.backwards = 0
    module = _module(Counting)
    every_two = ModelCheckpoint(tmp_path, every_n_train_steps=2, save_top_k=-1)
    scaler = CountingScaler()
    trainer, states = _fit(
        module, steps=4, val=True, val_check_interval=2, callbacks=[every_two],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )  # fmt: skip
    assert trainer.global_step == 4 and len(states) == 4  # max_steps: 4 iterations
    assert Counting.backwards == 4 * (K + 1)  # K virtual steps + the real one, every iteration
    assert scaler.updates == 4 * (K + 1)  # the GradScaler saw every one of them
    assert [h["step"] for h in module.val_history] == [2, 4]  # validated every 2 iterations
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
    ]
    assert module.ema_updates == 4 * (K + 2)
    # poly set after iteration t = 3 of 4 (counting virtual steps, it would have reached 0)
    groups = module.optimizers().param_groups
    assert [g["lr"] for g in groups] == [g["initial_lr"] * (1 - 3 / 4) ** 0.9 for g in groups]


class NaNAt(FST):
    """A NaN loss at the `at`-th loss computed (0-based)."""

    at = 1
    calls = 0

    def training_losses(self, batch):
        losses = super().training_losses(batch)
        type(self).calls += 1
        if type(self).calls - 1 == self.at:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


@pytest.mark.parametrize("where", ["virtual", "another rank at the final step"])
def test_a_non_finite_loss_abandons_the_whole_iteration(where, monkeypatch):
    class Module(NaNAt, Counting):
        pass

    Module.calls = Module.backwards = 0
    Module.at = 1 if where == "virtual" else -1
    module = _module(Module)
    if where != "virtual":  # every rank must agree: here another rank's final loss is NaN
        decisions = iter([True] * K + [False] + [True] * 100)
        monkeypatch.setattr(module, "_all_finite", lambda loss: next(decisions))
    initial = {
        "student": copy.deepcopy(module.model.state_dict()),
        "teacher": copy.deepcopy(module.teacher.network.state_dict()),
    }
    _, states = _fit(module, steps=1)
    abandoned, counted = states
    assert abandoned["global_step"] == 0 and counted["global_step"] == 1
    assert abandoned["ema_updates"] == 0 and abandoned["optimizer"]["state"] == {}
    for network in ("student", "teacher"):
        for key, value in initial[network].items():
            assert torch.equal(abandoned[network][key], value), (network, key)
    # no backward for the refused loss: 1 (virtual) or K (final) before it, then a full one
    assert Module.backwards == (1 if where == "virtual" else K) + K + 1
    assert module.nonfinite_steps == 1 and module.nonfinite_in_a_row == 0


@pytest.mark.slow
def test_ddp_ranks_abandon_together_and_take_the_same_backward_passes(tmp_path):
    """Two ranks (torchrun, gloo): a NaN on rank 1 alone abandons the iteration on both, before
    any backward of that loss, so both take 1 + 2 (K + 1) backward passes and stay equal."""
    import json
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).parent / "fst_ddp_worker.py"), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["backwards"] == 1 + 2 * (K + 1)
        assert rank["global_step"] == 2 and rank["nonfinite_steps"] == 1
        assert rank["ema_updates"] == 2 * (K + 2)
    assert ranks[0]["params"] == ranks[1]["params"]  # gradients averaged at every step


def test_resume_keeps_every_counter(tmp_path):
    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4:  # the end of the first epoch (4 batches)
                trainer.save_checkpoint(tmp_path / "step4.ckpt")

    uninterrupted = _module(base="cutmix", entropy_drop=0.2)  # random boxes: the RNG resumes too
    _fit(uninterrupted, steps=6, callbacks=[SaveAt()])
    resumed = _module(base="cutmix", entropy_drop=0.2)
    trainer, _ = _fit(resumed, steps=6, ckpt_path=str(tmp_path / "step4.ckpt"))
    assert trainer.global_step == 6
    assert resumed.ema_updates == uninterrupted.ema_updates == 6 * (K + 2)
    for network in ("model", "teacher.network"):
        expected = uninterrupted.get_submodule(network).state_dict()
        for key, value in resumed.get_submodule(network).state_dict().items():
            assert torch.equal(value, expected[key]), (network, key)


# ---------------------------------------------------------------------- the loss, by formula


def test_cutmix_takes_the_next_image_inside_the_box(monkeypatch):
    module = _module(base="cutmix", cutmix_p=1.0)
    box = torch.zeros(4, 8, 8, dtype=torch.bool)
    box[:, 2:6, 1:7] = True
    monkeypatch.setattr(mixing, "half_area_boxes", lambda n, h, w, device=None: box[:n])
    seen = []
    module.model.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    batch = next(iter(DataLoader(_samples(4), batch_size=4)))
    batch["unlabeled"]["ignore"][1, 0, 0] = 255
    module.training_losses(TrainBatch.parse(batch))
    weak = batch["unlabeled"]["weak"]
    mixed = seen[-1][4:]
    for i in range(4):
        partner = (i + 1) % 4
        assert torch.equal(mixed[i][:, box[i]], weak[partner][:, box[i]])
        assert torch.equal(mixed[i][:, ~box[i]], weak[i][:, ~box[i]])


def test_chunk_gives_the_present_and_the_future_batches():
    raw = next(iter(DataLoader(_samples(8), batch_size=8)))
    chunks = TrainBatch.parse(raw).chunk(4)
    assert len(chunks) == 4
    assert torch.equal(chunks[2].unlabeled.weak, raw["unlabeled"]["weak"][4:6])
    assert torch.equal(chunks[3].labeled.mask, raw["labeled"]["mask"][6:8])
    assert [len(c.unlabeled) for c in chunks] == [2, 2, 2, 2]


def test_w_loaders_draw_k_plus_one_batches(toy_root):
    from hydra import compose, initialize_config_dir

    from semiseg.run.build import build_data_and_method

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["method=fst", "method.variant=W", f"dataset.root={toy_root}", *TINY],
        )
    datamodule, module = build_data_and_method(cfg)
    assert datamodule.batch_size == 2 * (K + 1) and module.variant == "W"


def test_bench_times_the_whole_iteration(toy_root):
    from semiseg.tools import bench

    report = bench.main(
        ["method=fst", f"dataset.root={toy_root}", *TINY, "bench.steps=1", "bench.warmup=0"]
    )
    assert report["method"] == "fst"
    assert report["forward_s"] > 0 and report["backward_s"] > 0 and report["optimizer_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["D", "W"])
def test_fst_trains_on_the_toy_dataset(tmp_path, toy_root, variant):
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", "method=fst", f"method.variant={variant}", f"dataset.root={toy_root}", *TINY,
        "logger=none", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["semiseg"]["ema_updates"] == 3 * (K + 2 if variant == "D" else 2)
