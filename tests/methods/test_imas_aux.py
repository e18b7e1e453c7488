"""iMAS and FST with U2PL's auxiliary head (model.aux_head, the public Cityscapes configs): the labeled
loss is the public Criterion's main + 0.4 x aux, on the labeled images only."""

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError
from semiseg.methods.losses import supervised_ce
from semiseg.run.build import build_data_and_method

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, TINY  # noqa: E402
from public_u2pl_model import public_sup_loss  # noqa: E402


def _compose(toy_root, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"dataset.root={toy_root}", *TINY, *overrides])


@pytest.mark.parametrize("method", ["imas", "fst"])
def test_the_weighted_aux_loss_of_the_labeled_images_joins_loss_x(toy_root, method):
    """iMAS's and FST's (u2pl_step) labeled loss with the aux head."""
    cfg = _compose(toy_root, f"method={method}", "model.aux_head=true", "method.ema_warmup=ramp")
    datamodule, module = build_data_and_method(cfg)
    assert module.aux_weight == 0.4 and module.model.aux is not None
    batch = TrainBatch.parse(
        {k: next(iter(loader)) for k, loader in datamodule.train_dataloader().items()}
    )
    seen = {}
    module.model.register_forward_hook(
        lambda _m, _args, out: seen.setdefault("out", out) if isinstance(out, dict) else None
    )
    module.train()
    losses = module.training_losses(batch)
    out, y = seen["out"], batch.labeled.mask
    n_x = y.shape[0]
    expected = public_sup_loss(supervised_ce, out["logits"][:n_x], out["aux"][:n_x], y)
    assert torch.allclose(losses["loss_x"], expected, atol=1e-6)
    assert not torch.allclose(losses["loss_x"], supervised_ce(out["logits"][:n_x], y))
    losses["loss"].backward()
    assert all(p.grad is not None for p in module.model.aux.parameters())


def test_an_aux_head_no_method_trains_is_refused(toy_root):
    with pytest.raises(ConfigError, match="model.aux_head=true: method=unimatch has no loss"):
        build_data_and_method(_compose(toy_root, "method=unimatch", "model.aux_head=true"))


@pytest.mark.parametrize(
    ("experiment", "aux_head"),
    [
        ("imas_cityscapes", True),
        ("fst_cityscapes", True),
        ("augseg_pascal", False),
        ("augseg_cityscapes", False),
    ],
)
def test_the_u2pl_code_base_recipes_build_its_resnet(experiment, aux_head):
    """iMAS's and FST's Cityscapes configs: multi-grid and the aux head (0.4); AugSeg's exps
    configs: multi-grid, no aux head."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    assert cfg.model.multi_grid is True and cfg.model.aux_head is aux_head
    if aux_head:
        assert cfg.method.aux_weight == 0.4
