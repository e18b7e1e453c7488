"""The paper recipes: each experiment config against the public code's values, the recipe table
of docs/recipes.md against the composed configs, and the ImageNet initialisation end to end."""

import json
import shutil

import layouts
import pytest
import torch
from cli import REPO, run_script
from hydra import compose, initialize_config_dir

from semiseg.tools import recipes


@pytest.fixture(scope="module")
def rows():
    return recipes.rows()


def test_every_experiment_config_is_in_the_table():
    names = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert names == set(recipes.EXPERIMENTS) | set(recipes.OUTSIDE_TABLE)


def test_recipes_match_the_public_code(rows):
    for row in rows:
        ref, where = row.reference, (row.experiment, row.split)
        assert row.weights == ref.weights, where  # ImageNet init, from the public file name
        assert row.crop == ref.crop, where
        assert row.batch * 4 == ref.batch * ref.gpus, where  # the same total batch on 4 devices
        assert row.lr_4 == pytest.approx(ref.lr), where
        assert row.lr_1 == pytest.approx(ref.lr / 4), where  # linear scaling to one device
        assert row.epochs == ref.epochs, where
        # 2 GPUs x 8 images and 4 x 4 round the per-GPU share differently: at most a step an epoch
        # (a public loader with an epoch of its own: see test_steps_worked_by_hand)
        if ref.epoch_images is None:
            tolerance = 0 if ref.gpus == 4 else row.epochs
            assert abs(row.steps_4 - row.reference_steps) <= tolerance, where
        for key, ours, theirs in row.checks:  # weight decay, tau, loss weight, EMA decay, OHEM
            assert ours == pytest.approx(theirs), (*where, key)
        if ref.epochs is None:  # a fixed iteration count (CSS): the same steps on any devices
            assert row.steps_1 == row.steps_4 == ref.iterations, where
        else:
            assert row.steps_1 >= 4 * row.steps_4 - 4 * row.epochs, where


def test_steps_worked_by_hand(rows):
    by_key = {(r.experiment, r.split): r for r in rows}
    # supervised.py: 92 labels over 4 GPUs x 4 images: ceil(92 / 4) = 23 per GPU, 5 batches,
    # x 80 epochs = 400 steps (the figure); one device: 92 // 4 = 23 x 80 = 1840.
    supervised = by_key[("supervised_pascal", "92")]
    assert (supervised.steps_4, supervised.steps_1, supervised.reference_steps) == (400, 1840, 400)
    # unimatch.py: 10,490 unlabeled: ceil(10490 / 4) = 2623, // 2 = 1311 batches, x 80 = 104,880
    unimatch = by_key[("unimatch_pascal", "92")]
    assert (unimatch.steps_4, unimatch.reference_steps) == (104_880, 104_880)
    # COCO 1/512: 118,055 unlabeled: ceil / 4 = 29,514, // 2 = 14,757 (the public log's loader
    # length is 8 x 1844 .. 8 x 1845), x 30 epochs
    assert by_key[("unimatch_coco", "1/512")].steps_4 == 442_710
    # crops: UniMatch's blended splits at 321, U2PL's at 513 (the public training logs)
    assert by_key[("unimatch_pascal_blended", "1/16")].crop == 321
    assert by_key[("unimatch_pascal_blended", "u2pl_1_16")].crop == 513
    assert by_key[("unimatch_coco", "1/32")].backbone == "xception65"
    # FST Pascal 662 (U2PL's split): 9920 unlabeled / (4 x 4) = 620 iterations x 40 epochs
    assert by_key[("fst_pascal", "u2pl_1_16")].steps_4 == 24_800
    assert by_key[("fst_pascal", "u2pl_1_16")].reference_steps == 24_800
    # FST Cityscapes: the public loaders draw 2975 - 744 = 2231 images an epoch: ceil(2231 / 8)
    # = 279 per GPU, // 2 = 139 x 80 = 11,120; here the same 744 split's 2231 unlabeled images:
    # ceil(2231 / 4) = 558, // 4 = 139 x 80 = 11,120
    fst_cityscapes = by_key[("fst_cityscapes", "1/4")]
    assert (fst_cityscapes.reference_steps, fst_cityscapes.steps_4) == (11_120, 11_120)
    # CSS: 80,000 iterations (ori_pseudo.py's --total_iter) at 4 x 8, lr 6.4e-3 for every layer
    css = by_key[("css_pascal", "92")]
    assert (css.steps_4, css.steps_1, css.epochs, css.crop) == (80_000, 80_000, None, 512)
    assert by_key[("css_cityscapes", "1/8")].lr_4 == pytest.approx(0.0064)


def test_setting_the_split_equals_composing_with_it():
    import semiseg.data  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=unimatch_pascal_blended", "split=u2pl_1_4"])
    row = recipes.resolve("unimatch_pascal_blended", "u2pl_1_4")
    assert cfg.dataset.crop_size == row.crop == 513 and cfg.data.split == "u2pl_1_4"


def test_docs_show_the_table(rows):
    doc = (REPO / "docs" / "recipes.md").read_text()
    assert doc.count(recipes.TABLE_BEGIN) == 1 and doc.count(recipes.TABLE_END) == 1, (
        "docs/recipes.md must hold the recipe table once, between its begin and end markers"
    )
    begin = doc.index(recipes.TABLE_BEGIN) + len(recipes.TABLE_BEGIN)
    end = doc.index(recipes.TABLE_END)
    assert doc[begin:end].strip() == recipes.markdown_table(rows), (
        "the recipe table of docs/recipes.md is out of date: paste the output of "
        "`python -m semiseg.tools.recipes` into it"
    )


# ---------------------------------------------------------------- initialisation end to end


def reference_resnet_state(layers=(3, 4, 23, 3), seed=0) -> dict:
    """Our transcription of the public code's ImageNet ResNet file (model/backbone/resnet.py):
    deep stem 3-64-64-128 in `conv1`, `bn1` on 128 channels, torchvision's bottleneck names,
    the ImageNet classifier `fc`. Names and shapes only; the values are random."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, c_out, c_in, k):
        state[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * 0.05

    def bn(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_var"] = 1 + torch.rand(c, generator=g)
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1.0", 64, 3, 3), bn("conv1.1", 64)
    conv("conv1.3", 64, 64, 3), bn("conv1.4", 64)
    conv("conv1.6", 128, 64, 3), bn("bn1", 128)
    inplanes = 128
    for index, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), 1):
        for b in range(blocks):
            p = f"layer{index}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["fc.weight"] = torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


def _pascal_with_split_92(tmp_path):
    root = layouts.pascal(tmp_path / "VOC2012")
    shutil.copytree(root / "splits" / "1_16", root / "splits" / "92")
    return root


FAST = [
    "dataset.crop_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=1",
    "trainer.check_val_every_n_epoch=null",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


@pytest.mark.slow
def test_paper_recipe_needs_the_weights_then_loads_every_key(tmp_path):
    root = _pascal_with_split_92(tmp_path)
    weights = tmp_path / "pretrained"
    weights.mkdir()
    command = ["experiment=unimatch_pascal", "split=92", f"model.pretrained_dir={weights}"]

    # Without the file: one line, exit 2, before any data is read (a missing root says the same).
    for data_root in (root, tmp_path / "no_such_root"):
        proc = run_script(
            "train.py",
            *command,
            f"dataset.root={data_root}",
            *FAST,
            f"hydra.run.dir={tmp_path / 'failed'}",
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"error: model.pretrained=imagenet: no ImageNet weights for resnet101 at "
            f"{weights / 'resnet101.pth'} (model.pretrained_dir={weights}) nor in the hub caches"
        )
        # both ways out: the public file there, or the hub cache (conftest: empty caches)
        assert "put the ImageNet file published with the UniMatch code there" in last
        assert "fill the hub cache with timm/resnet101s.gluon_in1k" in last
        assert last.endswith("or train from random weights with model.pretrained=scratch")

    # With a file in the public layout: every backbone key is loaded, and the run trains. At
    # lr 0 the step leaves the weights as loaded, so the checkpoint shows what was read.
    state = reference_resnet_state()
    torch.save(state, weights / "resnet101.pth")
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        *command,
        f"dataset.root={root}",
        *FAST,
        "optim.lr=0",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"backbone resnet101: imagenet (weights from {weights / 'resnet101.pth'})" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 1
    assert results["init"]["backbone"] == "imagenet"
    assert results["init"]["file"] == str(weights / "resnet101.pth")
    assert len(results["init"]["sha256"]) == 64
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    trained = checkpoint["state_dict"]
    backbone = {k[len("model.backbone.") :]: v for k, v in trained.items() if ".backbone." in k}
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(backbone) == set(expected)
    for key, value in expected.items():
        if "running_" in key or "num_batches" in key:
            continue  # BatchNorm statistics move in the training step, as they should
        assert torch.equal(backbone[key], value), key


def test_a_weights_file_that_does_not_match_fails_in_one_line(tmp_path, toy_root):
    state = reference_resnet_state(layers=(2, 2, 2, 2))  # a ResNet-18-sized bottleneck file
    torch.save(state, tmp_path / "wrong.pth")
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        "model.encoder=resnet18",
        f"model.pretrained={tmp_path / 'wrong.pth'}",
        *FAST,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: model.pretrained: {tmp_path / 'wrong.pth'} does not match")
    assert "Error in call to target" not in proc.stderr  # Hydra's wrapper is unwrapped
