"""FixMatch and UniMatch with `method.strong_views=step`: the workers send weak views only and the
strong views and CutMix boxes are made on the batch in the training step."""

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from semiseg.errors import ConfigError
from semiseg.run.build import build_data_and_method

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, TINY  # noqa: E402

from semiseg.data.batch import TrainBatch, Unlabeled


def _build(toy_root, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset.root={toy_root}", *TINY, *overrides])
    return build_data_and_method(cfg)


def _first_batch(datamodule):
    return {k: next(iter(loader)) for k, loader in datamodule.train_dataloader().items()}


@pytest.mark.parametrize("method", ["fixmatch", "unimatch"])
def test_workers_send_weak_views_and_the_step_makes_the_rest(toy_root, method):
    datamodule, module = _build(toy_root, f"method={method}", "method.strong_views=step")
    batch = _first_batch(datamodule)
    u = batch["unlabeled"]
    assert not any(k.startswith(("strong", "box", "mix_strong")) for k in u), sorted(u)
    assert {"weak", "ignore", "mix_weak", "mix_ignore"} <= set(u)

    torch.manual_seed(0)
    typed = TrainBatch.parse(batch)
    views, mix = module.unlabeled_views(typed.unlabeled)
    for k in range(1, module.num_strong_views + 1):
        strong, box = views.strong(k), views.box(k)
        assert strong.shape == u["weak"].shape and strong.dtype == torch.float32
        assert box.shape == u["ignore"].shape and box.dtype == torch.bool
        assert not torch.equal(strong, u["weak"])
        assert mix.strong(k).shape == u["mix_weak"].shape
        assert not torch.equal(mix.strong(k), strong)
    assert typed.unlabeled.strong1 is None  # the batch itself is not written

    module.train()
    losses = module.training_losses(typed)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)


def test_flip_partner_takes_the_batchs_own_strong_views_reversed(toy_root):
    datamodule, module = _build(
        toy_root, "method=unimatch", "method.strong_views=step", "method.mix_partner=flip"
    )
    u = _first_batch(datamodule)["unlabeled"]
    assert "mix_weak" not in u
    views, mix = module.unlabeled_views(Unlabeled.from_dict(u))
    for key in ("weak", "strong1", "strong2", "ignore"):
        assert torch.equal(getattr(mix, key), getattr(views, key).flip(0)), key


def test_an_unknown_strong_views_value_is_a_config_error(toy_root):
    with pytest.raises(InstantiationException) as err:  # train.py prints its cause in one line
        _build(toy_root, "method=fixmatch", "method.strong_views=gpu")
    assert isinstance(err.value.__cause__, ConfigError)
    assert str(err.value.__cause__) == (
        "method.strong_views 'gpu' is unknown: use one of workers, step"
    )


@pytest.mark.parametrize("method", ["imas", "augseg"])
def test_intensity_methods_can_take_the_workers_strong_view(toy_root, method, monkeypatch):
    datamodule, module = _build(toy_root, f"method={method}", "method.strong_view=workers")
    batch = _first_batch(datamodule)
    u = batch["unlabeled"]
    assert "strong1" in u and not torch.equal(u["strong1"], u["weak"])
    assert torch.equal(module.strong_view(TrainBatch.parse(batch).unlabeled), u["strong1"])

    # the step trains on that view: the intensity ops are never called
    def no_intensity(*args):
        raise AssertionError("random_intensity called with strong_view=workers")

    monkeypatch.setattr("semiseg.methods.teacher_student.random_intensity", no_intensity)
    module.train()
    losses = module.training_losses(TrainBatch.parse(batch))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])


def test_intensity_methods_make_their_strong_view_in_the_step_by_default(toy_root):
    datamodule, module = _build(
        toy_root, "method=augseg", "method.intensity.ops=[invert]", "method.intensity.num_ops=[1,1]"
    )
    u = _first_batch(datamodule)["unlabeled"]
    assert "strong1" not in u
    assert module.policy.ops == ("invert",) and module.policy.max_ops == 1
    # one invert: every 8-bit value v becomes 255 - v
    from semiseg.augment.intensity import from_uint8, to_uint8

    strong = module.strong_view(Unlabeled.from_dict(u))
    assert torch.equal(to_uint8(strong), 255 - to_uint8(u["weak"]))
    assert torch.allclose(from_uint8(255 - to_uint8(u["weak"])), strong)
