"""predict.py on a user's images: a tiny trained checkpoint, nested folders, TTA, bad input."""

import json

import numpy as np
import pytest
import torch
from cli import run_script
from PIL import Image
from torch import nn
from trained import assert_argmax_equal, image_tensor

from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
from semiseg.data import palettes
from semiseg.data import transforms as tf
from semiseg.errors import ConfigError
from semiseg.evaluation.inference import predict
from semiseg.predict import find_images, output_names, tta_probabilities

# (relative input path, toy training image it is a copy of): the same name in two folders, and
# a JPEG one level deeper
INPUTS = [("a/x.png", 0), ("b/x.png", 1), ("c/d/y.jpg", 2)]
OUTPUTS = ["a/x.png", "b/x.png", "c/d/y.png"]


@pytest.fixture(scope="module")
def checkpoint(varied_checkpoint):
    return varied_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory, toy_root):
    root = tmp_path_factory.mktemp("images")
    for rel, k in INPUTS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(toy_root / "images" / f"train_{k:04d}.png").convert("RGB").save(root / rel)
    return root


@pytest.fixture(scope="module")
def predicted(checkpoint, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "predictions"
    proc = predict_cli(checkpoint, images, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def predict_cli(checkpoint, input_path, output, *overrides):
    return run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input={input_path}",
        f"output={output}",
        *overrides,
    )


def model_and_palette(checkpoint):
    state = load_checkpoint(checkpoint)
    palette = palettes.resolve(state["semiseg"]["config"]["dataset"]["palette"])
    return model_from_checkpoint(state).eval(), palette, len(state["semiseg"]["class_names"])


def test_same_names_in_nested_folders_are_written_apart(predicted, images):
    out, proc = predicted
    for kind in ("index", "colour", "overlay"):
        written = sorted(p.relative_to(out / kind).as_posix() for p in (out / kind).rglob("*.png"))
        assert written == OUTPUTS, kind
    summary = json.loads((out / "predict.json").read_text())
    assert summary["num_images"] == 3 and summary["mode"] == "original"
    assert summary["tta"] == {"flip": False, "scales": [1.0]}
    assert "predict (original)" in proc.stderr  # the progress bar
    assert not any(out.glob(".hydra")) and not (out / "predict.log").exists()


def test_index_is_the_models_argmax_with_the_palette_embedded(predicted, images, checkpoint):
    out, _ = predicted
    model, palette, num_classes = model_and_palette(checkpoint)
    for (rel, _), name in zip(INPUTS, OUTPUTS, strict=True):
        written = Image.open(out / "index" / name)
        assert written.mode == "P"
        embedded = np.array(written.getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(embedded[:num_classes], palette[:num_classes])
        x = image_tensor(images / rel)
        probs = predict(model, x, "original", 64, num_classes)  # eval.py's prediction
        assert_argmax_equal(np.array(written), probs)


def test_colour_is_the_palette_of_the_index_and_overlay_blends_it(predicted, images, checkpoint):
    out, _ = predicted
    _, palette, _ = model_and_palette(checkpoint)
    for (rel, _), name in zip(INPUTS, OUTPUTS, strict=True):
        index = np.array(Image.open(out / "index" / name))
        colour = Image.open(out / "colour" / name)
        assert colour.mode == "RGB"
        assert np.array_equal(np.array(colour), palette[index])
        image = np.array(tf.load_image(images / rel), dtype=np.float64)
        blended = np.array(Image.open(out / "overlay" / name), dtype=np.float64)
        assert blended.shape == image.shape
        expected = 0.5 * image + 0.5 * np.array(colour, dtype=np.float64)  # alpha 0.5
        assert np.abs(blended - expected).max() <= 1.0


def test_flip_tta_is_the_mean_softmax_of_the_image_and_its_flip(checkpoint, images, tmp_path):
    # one file as input; gray index PNGs and a stronger overlay
    path = images / INPUTS[0][0]
    out = tmp_path / "out"
    proc = predict_cli(
        checkpoint,
        path,
        out,
        "tta.flip=true",
        "index_format=gray",
        "alpha=0.8",
        "save.colour=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "index/x.png",
        "overlay/x.png",
    ]
    model, palette, _ = model_and_palette(checkpoint)
    x = image_tensor(path)
    with torch.no_grad():
        plain = model(x).softmax(1)
        mean = (plain + model(x.flip(-1)).softmax(1).flip(-1)) / 2
    written = Image.open(out / "index" / "x.png")
    assert written.mode == "L"
    index = np.array(written)
    assert (index != plain.argmax(1)[0].numpy()).mean() > 0.01  # the flip changed it
    assert_argmax_equal(index, mean)
    image = np.array(tf.load_image(path), dtype=np.float64)
    blended = np.array(Image.open(out / "overlay" / "x.png"), dtype=np.float64)
    assert np.abs(blended - (0.2 * image + 0.8 * palette[index])).max() <= 1.0


def test_tta_probabilities_average_flips_and_scales():
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, 3, padding=1).eval()  # not flip-symmetric
    x = torch.randn(1, 3, 24, 40)
    plain = tta_probabilities(net, x, "original", 32, 5)
    assert torch.allclose(plain, predict(net, x, "original", 32, 5), atol=1e-6)
    flipped = tta_probabilities(net, x, "original", 32, 5, flip=True)
    with torch.no_grad():
        mean = (net(x).softmax(1) + net(x.flip(-1)).softmax(1).flip(-1)) / 2
    assert torch.allclose(flipped, mean, atol=1e-6)
    # sliding-window sums are normalised before averaging; other scales come back to H x W
    both = tta_probabilities(net, x, "sliding_window", 16, 5, flip=True, scales=(0.5, 1.0, 1.5))
    assert both.shape == (1, 5, 24, 40)
    assert torch.allclose(both.sum(1), torch.ones(1, 24, 40), atol=1e-5)


def test_images_are_found_recursively_apart_from_the_output(tmp_path):
    for rel in ["a/x.png", "b/x.PNG", "b/x.jpg", "notes.txt", "out/old.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    root, found = find_images(tmp_path, output=tmp_path / "out")
    assert root == tmp_path
    assert [p.as_posix() for p in found] == ["a/x.png", "b/x.PNG", "b/x.jpg"]
    assert [p.as_posix() for p in output_names(found)] == ["a/x.png", "b/x.PNG.png", "b/x.jpg.png"]
    root, found = find_images(tmp_path / "a" / "x.png")
    assert root == tmp_path / "a" and [p.as_posix() for p in found] == ["x.png"]
    with pytest.raises(ConfigError, match="holds no images"):
        find_images(tmp_path / "a", output=tmp_path / "a")


@pytest.mark.slow  # five processes (about 25 s on 2 busy cores)
def test_bad_input_fails_in_one_line(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_text("not an image")
    cases = [
        ((checkpoint, tmp_path / "missing", tmp_path / "o"), "input", "does not exist"),
        ((checkpoint, tmp_path / "empty", tmp_path / "o"), "input", "holds no images"),
        ((checkpoint, tmp_path / "bad", tmp_path / "o"), "broken.png", "move it out of input"),
        ((tmp_path / "no.ckpt", tmp_path / "bad", tmp_path / "o"), "no.ckpt", "does not exist"),
        ((checkpoint, tmp_path / "bad", ""), "output", "give output=DIR"),
    ]
    for args, names, fix in cases:
        proc = predict_cli(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr
        # one line (after the progress bar, when it had started): what, where, how to fix it
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr
        assert names in errors[0] and fix in errors[0], errors


def test_images_of_one_size_are_predicted_in_batches_with_the_same_result(
    checkpoint, toy_root, tmp_path, monkeypatch
):
    from cli import REPO
    from hydra import compose, initialize_config_dir

    from semiseg.predict import run

    # five images: three of one size, then one of another, then one of the first size again
    folder = tmp_path / "in"
    folder.mkdir()
    for k, size in enumerate([(96, 80), (96, 80), (96, 80), (72, 88), (96, 80)]):
        image = Image.open(toy_root / "images" / f"train_{k:04d}.png").convert("RGB")
        image.crop((0, 0, *size)).save(folder / f"{k}.png")

    from semiseg import predict as predict_module

    forwards = []  # the batch of every forward

    def recording(model, batch, *args):
        forwards.append(tuple(batch.shape))
        return tta_probabilities(model, batch, *args)

    monkeypatch.setattr(predict_module, "tta_probabilities", recording)

    def predicted(batch_size):
        out = tmp_path / f"out{batch_size}"
        forwards.clear()
        overrides = [f"ckpt_path={checkpoint}", f"input={folder}", f"output={out}"]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("predict", overrides=[*overrides, f"batch_size={batch_size}"])
        summary = run(cfg)
        assert summary["batch_size"] == batch_size and summary["num_images"] == 5
        # batches of up to batch_size consecutive images of one size (HxW: 80x96, then 88x72)
        sizes = {1: [1, 1, 1, 1, 1], 3: [3, 1, 1]}[batch_size]
        heights = {1: [80, 80, 80, 88, 80], 3: [80, 88, 80]}[batch_size]
        assert [f[0] for f in forwards] == sizes and [f[2] for f in forwards] == heights
        return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "index").glob("*.png"))}

    one_by_one, batched = predicted(1), predicted(3)
    assert sorted(batched) == [f"{k}.png" for k in range(5)]
    model, _, num_classes = model_and_palette(checkpoint)
    for name, index in batched.items():
        assert index.shape == one_by_one[name].shape
        # a batch sums in another order than one image: compare up to near-ties
        probs = predict(model, image_tensor(folder / name), "original", 64, num_classes)
        assert_argmax_equal(index, probs)
        assert_argmax_equal(one_by_one[name], probs)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"ckpt_path={checkpoint}",
                f"input={folder}",
                f"output={tmp_path / 'x'}",
                "batch_size=0",
            ],
        )
    with pytest.raises(ConfigError, match="batch_size=0: give how many images"):
        run(cfg)


def test_a_volume_checkpoint_is_refused_in_one_line(tmp_path):
    """An ACDC checkpoint (1-channel volumes): predict.py says to use eval.py, no traceback."""
    import torch

    dataset = {"name": "acdc", "task": "volume", "eval_mode": "volume", "in_channels": 1}
    state = {"config": {"dataset": dataset}, "class_names": ["bg", "rv", "myo", "lv"]}
    torch.save({"semiseg": state, "state_dict": {}}, tmp_path / "acdc.ckpt")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    proc = run_script(
        "predict.py", f"ckpt_path={tmp_path / 'acdc.ckpt'}", f"input={tmp_path / 'images'}",
        f"output={tmp_path / 'out'}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1
    assert "1-channel volumes (dataset=acdc)" in lines[0] and "eval.py save_predictions" in lines[0]


def test_images_waiting_for_their_batch_are_written_before_an_unreadable_one(
    checkpoint, toy_root, tmp_path
):
    from cli import REPO
    from hydra import compose, initialize_config_dir

    from semiseg.data.splits import SplitError
    from semiseg.predict import run

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for k in range(2):
        Image.open(toy_root / "images" / f"train_{k:04d}.png").convert("RGB").save(
            folder / f"{k}.png"
        )
    (folder / "2.png").write_text("not an image")
    Image.open(toy_root / "images" / "train_0003.png").convert("RGB").save(folder / "3.png")
    overrides = [f"ckpt_path={checkpoint}", f"input={folder}", f"output={out}", "batch_size=4"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=overrides)
    with pytest.raises(SplitError, match="2.png"):
        run(cfg)
    # 0 and 1 waited in a batch of 4 when 2 failed: written all the same; 3 never read
    for kind in ("index", "colour", "overlay"):
        assert sorted(p.name for p in (out / kind).iterdir()) == ["0.png", "1.png"], kind
