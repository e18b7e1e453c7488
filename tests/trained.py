"""A tiny trained checkpoint whose predictions vary across an image (predict and export tests)."""

import numpy as np
import torch
from cli import TINY, run_script

from semiseg.checkpoints.load import model_from_checkpoint
from semiseg.data import transforms as tf


def train_varied(run_dir, toy_root):
    """Train the tiny supervised model for 3 steps and return `varied` of its last checkpoint."""
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        *TINY,
        "method=supervised",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return varied(run_dir / "checkpoints" / "last.ckpt", toy_root)


def varied(path, toy_root):
    """The checkpoint with its classifier replaced by random weights centred on the mean
    feature of a toy image, so that predictions vary across an image and with its flip
    (after 3 training steps the model predicts background everywhere)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["state_dict"]
    generator = torch.Generator().manual_seed(0)
    shape = weights["model.classifier.weight"].shape
    weights["model.classifier.weight"] = 3.0 * torch.randn(shape, generator=generator)
    model = model_from_checkpoint(state).eval()
    features = []
    hook = model.classifier.register_forward_hook(lambda m, i, o: features.append(i[0]))
    with torch.no_grad():
        model(image_tensor(toy_root / "images" / "train_0000.png"))
    hook.remove()
    centre = features[0].mean((0, 2, 3))
    weights["model.classifier.bias"] = -(weights["model.classifier.weight"][:, :, 0, 0] @ centre)
    out = path.with_name("varied.ckpt")
    torch.save(state, out)
    return out


def image_tensor(path):
    return tf.normalize(tf.load_image(path))[None]


def assert_argmax_equal(index: np.ndarray, probs: torch.Tensor):
    """The written classes are the argmax wherever the top two classes are not a near-tie
    (the test process may sum in another order than predict.py's)."""
    top2 = probs[0].topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    assert clear.mean() > 0.95
    predicted = probs[0].argmax(0).numpy()
    assert len(np.unique(predicted)) >= 3  # a check that means something
    assert np.array_equal(index[clear], probs[0].argmax(0).numpy()[clear])
