"""CSS: each computation worked out by hand (methods/contrastive.py), T_r's trap shown on a model
state with clustered representations, the step on the toy data, prototypes across two ranks."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from semiseg.errors import ConfigError
from semiseg.methods.contrastive import (
    class_sums,
    confident_fraction,
    contrastive_loss,
    nearest,
    prototype_similarity,
    rampdown,
    representation_pseudo_labels,
    update_prototypes,
    weighted_pseudo_label_loss,
)
from semiseg.run.build import build_data_and_method

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, TINY, run_eval, run_script  # noqa: E402

from semiseg.data.batch import TrainBatch

SMALL = ["method.num_queries=8", "method.num_negatives=16"]  # the contrastive loss in ms


def pixels(*vectors) -> torch.Tensor:
    """(1, D, 1, P) representations from P vectors."""
    return torch.tensor(vectors, dtype=torch.float).T.reshape(1, len(vectors[0]), 1, -1)


# ---------------------------------------------------------------- representation space


def test_prototype_similarity_by_hand():
    rep = pixels([1.0, 0.0], [0.0, 2.0])
    prototypes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    sim = prototype_similarity(rep, prototypes)
    r = 1 / math.sqrt(2)
    # a never-seen (zero) prototype: similarity 0, as the public F.normalize gives
    assert torch.allclose(sim[0, :, 0], torch.tensor([[1.0, 0.0], [r, r], [0.0, 0.0]]))


def test_representation_labels_by_hand():
    conf, labels = representation_pseudo_labels(torch.tensor([0.5, 0.0]).view(1, 2, 1, 1), 0.5)
    assert labels.item() == 0 and conf.item() == pytest.approx(math.e / (math.e + 1))


def test_the_public_temperature_can_never_pass_097():
    """T_r = 0.5 (the scripts): even the best case, cosine 1 to its prototype and -1 to the 20
    others, gives e^2 / (e^2 + 20 e^-2) = 0.732. T_r = 0.1 (Model_cross's default) passes on
    clustered representations: cosine 0.9 to the own prototype and 0.1 to the others gives
    e^9 / (e^9 + 20 e^1) = 0.993; at 0.5 the same pixel gets 0.198."""
    best = torch.full((1, 21, 1, 1), -1.0)
    best[0, 0] = 1.0
    conf, _ = representation_pseudo_labels(best, 0.5)
    assert conf.item() == pytest.approx(math.e**2 / (math.e**2 + 20 * math.e**-2))
    assert conf.item() < 0.74
    clustered = torch.full((1, 21, 1, 1), 0.1)
    clustered[0, 3] = 0.9
    conf_01, label = representation_pseudo_labels(clustered, 0.1)
    conf_05, _ = representation_pseudo_labels(clustered, 0.5)
    assert label.item() == 3
    assert conf_01.item() == pytest.approx(math.e**9 / (math.e**9 + 20 * math.e), rel=1e-5)
    assert conf_01.item() >= 0.97
    assert conf_05.item() == pytest.approx(math.e**1.8 / (math.e**1.8 + 20 * math.e**0.2), rel=1e-5)


# ---------------------------------------------------------------- the unsupervised loss


def test_confident_fraction_by_hand():
    conf = torch.tensor(
        [[[0.98, 0.5, 0.97, 0.99]], [[0.1, 0.99, 0.0, 0.0]], [[0.99, 0.99, 0.99, 0.99]]]
    )
    valid = torch.tensor([[[1, 1, 0, 1]], [[0, 0, 0, 0]], [[1, 1, 0, 0]]], dtype=torch.bool)
    weights = confident_fraction(conf, valid, 0.97)
    # 3 confident / 3 usable; no usable pixel: 0 (the public code: nan); mix mode's disagreeing
    # confident pixels count above the line: 4 / 2
    assert weights.tolist() == pytest.approx([1.0, 0.0, 2.0])


def test_weighted_loss_by_hand():
    logits = torch.zeros(2, 2, 1, 2)
    logits[0, 0, 0, 1] = 200.0  # image 0, pixel 1: CE exactly 0 for class 0, left out
    logits[1, 1, 0, 0] = math.log(3.0)  # image 1, pixel 0: p(1) = 3/4
    labels = torch.tensor([[[1, 0]], [[1, 0]]])
    valid = torch.tensor([[[1, 1]], [[1, 0]]], dtype=torch.bool)  # image 1, pixel 1 unusable
    weights = torch.tensor([0.5, 2.0])
    loss = weighted_pseudo_label_loss(logits, labels, valid, weights)
    assert loss.item() == pytest.approx((0.5 * math.log(2) + 2 * math.log(4 / 3)) / 2)
    nothing = weighted_pseudo_label_loss(logits, labels, torch.zeros_like(valid), weights)
    assert nothing.item() == 0.0


def test_nearest_downsampling_by_hand():
    labels = torch.arange(16).view(1, 4, 4)
    assert nearest(labels, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert nearest(labels, (4, 4)) is labels


# ---------------------------------------------------------------- prototypes


def test_class_sums_and_prototype_update_by_hand():
    rep = pixels([1.0, 0.0], [3.0, 2.0], [5.0, 5.0])
    labels = torch.tensor([[[0, 2, 255]]])  # the third pixel is ignored
    sums, counts = class_sums(rep, labels, 3)
    assert sums.tolist() == [[1, 0], [0, 0], [3, 2]] and counts.tolist() == [1, 0, 1]
    old = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    new = update_prototypes(old, sums, counts, 0.9)
    # class 0 never set: takes the mean; class 1 absent: kept; class 2: 0.9 old + 0.1 mean
    assert torch.allclose(new, torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.1, 0.2]]))
    assert old[0].tolist() == [0, 0]  # a new tensor


# ---------------------------------------------------------------- the contrastive loss


def _two_classes():
    rep = pixels([1.0, 0.0], [0.0, 1.0], [5.0, -3.0]).requires_grad_()
    labels = torch.tensor([[[0, 1, 255]]])
    prototypes = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    indicator = torch.zeros(1, 2, 1, 3)  # every pixel hard
    return rep, labels, indicator, prototypes


def test_contrastive_loss_by_hand():
    """Two classes of one pixel each, 4 queries (more than the one hard pixel: drawn with
    replacement), 3 negatives: every anchor is the class's pixel, every negative the other's.
    Class 0: cos(a, P0) = 1/sqrt(2), cos(a, b) = 0; class 1: cos(b, P1) = 1, cos(b, a) = 0.
    The ignored pixel never takes part."""
    rep, labels, indicator, prototypes = _two_classes()
    loss = contrastive_loss(rep, labels, indicator, prototypes, 0.8, 4, 3, 0.5)
    l0 = -math.log(math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 3))
    l1 = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_a_class_without_hard_pixels_adds_nothing_but_counts():
    rep, labels, indicator, prototypes = _two_classes()
    indicator[0, 1, 0, 1] = 0.9  # class 1's pixel is easy: no anchors for class 1
    loss = contrastive_loss(rep, labels, indicator, prototypes, 0.8, 4, 3, 0.5)
    l0 = -math.log(math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 3))
    assert loss.item() == pytest.approx(l0 / 2, rel=1e-5)  # still divided by 2 classes
    loss.backward()
    # the gradient reaches the anchors only: negatives are detached, the ignored pixel unused
    assert rep.grad[0, :, 0, 0].abs().sum() > 0
    assert rep.grad[0, :, 0, 1].abs().sum() == 0 and rep.grad[0, :, 0, 2].abs().sum() == 0


def test_a_class_without_pixels_is_neither_anchor_nor_negative():
    """Class 2 has a prototype (right beside P0) but no pixel in the batch: the loss is the
    two-class one, worked out in test_contrastive_loss_by_hand."""
    rep, labels, indicator, prototypes = _two_classes()
    prototypes = torch.cat((prototypes, torch.tensor([[1.0, 0.99]])))
    indicator = torch.zeros(1, 3, 1, 3)
    loss = contrastive_loss(rep, labels, indicator, prototypes, 0.8, 4, 3, 0.5)
    l0 = -math.log(math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 3))
    l1 = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_one_class_or_none_or_no_hard_pixel_gives_a_zero_with_a_graph():
    rep, labels, indicator, prototypes = _two_classes()
    easy = torch.ones_like(indicator)  # two classes, no hard pixel
    cases = [
        (torch.tensor([[[0, 0, 255]]]), indicator),
        (torch.tensor([[[255, 255, 255]]]), indicator),
        (labels, easy),
    ]
    for only, ind in cases:
        loss = contrastive_loss(rep, only, ind, prototypes, 0.8, 4, 3, 0.5)
        assert loss.item() == 0.0
        loss.backward()  # DDP needs the representation head in every backward
        assert torch.equal(rep.grad, torch.zeros_like(rep))


@pytest.mark.parametrize("near", [1, 2])
def test_negatives_come_from_the_classes_near_the_anchors_prototype(near):
    """Three classes; only class 0 has hard pixels. The prototype of class `near` points as
    P0 does, the other's the opposite way: at temperature 0.05 the far class has probability
    e^-40 and every negative comes from the near class's pixel."""
    a, b, c = [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]
    rep = pixels(a, b, c)
    labels = torch.tensor([[[0, 1, 2]]])
    prototypes = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    prototypes[near] = torch.tensor([1.0, 0.001])
    indicator = torch.zeros(1, 3, 1, 3)
    indicator[0, 1, 0, 1] = indicator[0, 2, 0, 2] = 0.9  # classes 1 and 2: no hard pixels
    t, k = 0.05, 5
    g = torch.Generator().manual_seed(0)
    loss = contrastive_loss(rep, labels, indicator, prototypes, 0.8, 6, k, t, generator=g)
    cos_neg = 0.8 if near == 1 else 0.96  # cos(a, b) or cos(a, c)
    l0 = math.log(1 + k * math.exp((cos_neg - 0.6) / t))  # cos(a, P0) = 0.6
    assert loss.item() == pytest.approx(l0 / 3, rel=1e-4)


def test_rampdown_by_hand():
    assert rampdown(0, 200) == 1.0
    assert rampdown(100, 200) == pytest.approx(math.exp(-1.25))
    assert rampdown(199, 200) == pytest.approx(math.exp(-5 * (199 / 200) ** 2))
    assert rampdown(200, 200) == 0.0 and rampdown(250, 200) == 0.0


# ---------------------------------------------------------------- the method


def _css(toy_root, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["method=css", f"dataset.root={toy_root}", *TINY, *SMALL, *overrides]
        )
    datamodule, module = build_data_and_method(cfg)
    batch = {k: next(iter(loader)) for k, loader in datamodule.train_dataloader().items()}
    return module, batch


@pytest.mark.parametrize("mode", ["cross", "mix"])
def test_training_step(toy_root, mode):
    module, batch = _css(toy_root, f"method.label_mode={mode}", "method.mix_mode=classmix")
    module.train()
    torch.manual_seed(0)
    losses = module.training_losses(TrainBatch.parse(batch))
    losses["loss"].backward()
    assert {"loss_x", "loss_u", "loss_contrast", "contrast_weight", "rep_mask_ratio"} <= set(losses)
    assert all(torch.isfinite(torch.as_tensor(v)) for k, v in losses.items() if k != "pseudo_acc")
    # the contrastive loss trains the representation head; the teacher gets nothing
    assert losses["loss_contrast"].item() > 0
    assert all(p.grad is not None for p in module.model.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    # the prototypes move only with a step that was taken
    assert module.prototypes.abs().sum() == 0
    module.after_optimizer_step()
    assert module.prototypes.abs().sum() > 0 and module.ema_updates == 1
    # a module buffer, checkpointed, outside every network (never broadcast with their buffers)
    assert "prototypes" in module.state_dict()
    for path in module.networks().values():
        assert not any(b is module.prototypes for b in module.get_submodule(path).buffers())


def _clustered(module, batch):
    """The teacher's representations made clustered: the left half of each weak view points
    along axis 0, the right half along axis 1, and the prototypes are those axes."""
    d = module.prototypes.shape[1]

    def clustered(head, inputs, output):
        rep = torch.zeros_like(output)
        half = output.shape[-1] // 2
        rep[:, 0, :, :half] = 1.0
        rep[:, 1, :, half:] = 1.0
        return rep + 0.01 * torch.randn_like(output)

    module.prototypes.copy_(torch.eye(module.num_classes, d))
    return module.teacher.network.representation.register_forward_hook(clustered)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_the_trap_on_a_model_state_with_clustered_representations(toy_root, temperature):
    """With 6 toy classes, a pixel at cosine 1 to its prototype and 0 to the others gets
    e^10 / (e^10 + 5) = 0.9998 at T_r = 0.1: confident pixels exist, images get weights, the
    cross loss learns. At T_r = 0.5 it gets e^2 / (e^2 + 5) = 0.60: none passes 0.97, every
    image weighs 0 and the cross loss is 0, as in the public scripts' runs.

    Where the halves meet, the cosines are upsampled (16 -> 64 columns, align_corners): image
    column x reads source column 15x/63; columns 31 and 32 fall at 0.38 and 0.62 of the way
    from source column 7 to 8, cosines (0.62, 0.38) to the two prototypes: softmax 0.91 at
    T_r = 0.1, below 0.97; columns 30 and 33 (0.14 of the way) reach 0.998."""
    module, batch = _css(
        toy_root,
        f"method.rep_temperature={temperature}",
        "method.mix_mode=none",
        "method.unlabeled_aug=strong_view",  # no rescale: the student's pixels are the teacher's
    )
    module.train()
    hook = _clustered(module, batch)
    try:
        losses = module.training_losses(TrainBatch.parse(batch))
    finally:
        hook.remove()
    not_padded = batch["unlabeled"]["ignore"] != 255
    if temperature == 0.1:
        columns = torch.ones(64, dtype=torch.bool)
        columns[[31, 32]] = False
        confident = not_padded & columns
        expected = confident.sum() / not_padded.sum()
        assert losses["rep_mask_ratio"].item() == pytest.approx(expected.item())
        per_image = confident.flatten(1).sum(1) / not_padded.flatten(1).sum(1)
        assert losses["image_weight"].item() == pytest.approx(per_image.mean().item())
        assert losses["loss_u"].item() > 0
    else:
        assert losses["rep_mask_ratio"].item() == 0.0
        assert losses["image_weight"].item() == 0.0
        assert losses["loss_u"].item() == 0.0


def test_contrast_weight_steps_once_per_labeled_epoch(toy_root):
    module, _ = _css(toy_root)
    module.labeled_epoch_steps = 3
    module._trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=10_000)
    assert module.contrast_weight() == 1.0
    module._trainer.global_step = 2 * 3 + 2  # inside labeled epoch 2
    assert module.contrast_weight() == pytest.approx(math.exp(-5 * (2 / 200) ** 2))
    module._trainer.global_step = 200 * 3
    assert module.contrast_weight() == 0.0
    module.rampdown_epochs = None  # over the whole training instead
    module._trainer.global_step = 5_000
    assert module.contrast_weight() == pytest.approx(math.exp(-5 * 0.25))
    module._trainer = None


def test_configuration_errors(toy_root):
    # hydra wraps the method's ConfigError; train.py prints its cause in one line
    with pytest.raises(Exception, match="label_mode") as err:
        _css(toy_root, "method.label_mode=both")
    assert isinstance(err.value.__cause__, ConfigError)
    with pytest.raises(Exception, match="representation head") as err:
        _css(toy_root, "model.representation_dim=null")
    assert isinstance(err.value.__cause__, ConfigError)


# ---------------------------------------------------------------- prototypes on two ranks


def _rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from semiseg.methods.css import CSS

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    module = SimpleNamespace(num_classes=3, prototypes=torch.zeros(3, 2), prototype_alpha=0.99)
    # rank 0 sees class 0 twice; rank 1 sees class 0 once and class 2: global means
    # class 0 = mean([1, 0], [3, 0], [0, 4]) = [4/3, 4/3], class 2 = [5, 5]
    rep = pixels([1.0, 0.0], [3.0, 0.0]) if rank == 0 else pixels([0.0, 4.0], [5.0, 5.0])
    labels = torch.tensor([[[0, 0]]]) if rank == 0 else torch.tensor([[[0, 2]]])
    new = CSS.updated_prototypes(module, rep, labels)
    torch.save(new, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two real processes (about 25 s on 2 busy cores)
def test_prototypes_are_the_global_class_means_on_every_rank(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(_rank, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = torch.tensor([[4 / 3, 4 / 3], [0.0, 0.0], [5.0, 5.0]])
    assert torch.allclose(ranks[0], expected) and torch.equal(ranks[0], ranks[1])


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_css_trains_and_its_teacher_is_evaluated(tmp_path, toy_root):
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", "method=css", f"dataset.root={toy_root}", *TINY, *SMALL, "logger=none",
        f"hydra.run.dir={run_dir}", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 3 and results["eval_network"] == "teacher"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["prototypes"].abs().sum() > 0
    assert checkpoint["semiseg"]["config"]["model"]["representation_dim"] == 256
    proc = run_eval(run_dir, tmp_path / "eval")  # the model is rebuilt with its head
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["val_miou"] == pytest.approx(results["val_miou"], abs=0.01)
    assert evaluated["eval_network"] == "teacher"  # eval.py too evaluates the teacher


def _module(*overrides):
    """The CSS module around a fresh model, without data."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=css", *TINY, *SMALL, *overrides])
    evaluation = {**OmegaConf.to_container(cfg.eval, resolve=True), "miou_subsets": {}}
    return instantiate(
        cfg.method,
        model=instantiate(cfg.model, num_classes=2),
        class_names=["a", "b"],
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        evaluation=evaluation,
        crop_size=cfg.dataset.crop_size,
    )


def test_image_pairs_take_the_strong_view_path_decided_once_at_set_up(capsys):
    """ReCo's jitter is defined on RGB images: a model of image pairs (6 channels) makes CSS mix
    the workers' strong views instead, said once when the module is built, not at every step."""
    module = _module("dataset=whu_cd", "model=siamese_deeplabv3plus")
    assert module.unlabeled_aug == "strong_view"
    said = capsys.readouterr().out
    assert said.count("css: method.unlabeled_aug=public jitters RGB images") == 1
    assert _module().unlabeled_aug == "public"  # RGB images keep the public pipeline
    assert "jitters RGB" not in capsys.readouterr().out
