"""A tiny synthetic stand-in for ACDC, generated on first use (`dataset=acdc_toy`).

Cine-MRI-like grayscale short-axis stacks, SIZE x SIZE pixels, in the ACDC layout of
`data/medical.py`: a noisy body ellipse holding a bright left-ventricle cavity (class 3) inside a
dark myocardium ring (class 2), and a bright right-ventricle crescent beside it (class 1), all
shrinking towards the apex (the last slices may lose the right ventricle). Each case has its own
position, sizes and contrast. Training cases are written as 2D slices, validation cases as 3D
volumes; splits 1, 3, 7 name the labeled cases (nested), the other training cases are unlabeled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semiseg.data.splits import Sample, write_list, write_split
from semiseg.data.toy import generate_once

VERSION = "acdc-toy-1"
VERSION_FILE = ".acdc_toy_version"
SIZE = 64
SLICES = 8
NUM_TRAIN_CASES = 14
NUM_VAL_CASES = 4
SPLITS = (1, 3, 7)
CLASSES = ["background", "right_ventricle", "myocardium", "left_ventricle"]


def draw_case(rng: np.random.Generator, size: int = SIZE, depth: int = SLICES):
    """(image float32 (D, H, W) in [0, 1], label uint8 (D, H, W)) of one synthetic case."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-4, 4, 2) * size / 64
    r_lv = rng.uniform(6, 9) * size / 64
    wall = rng.uniform(2.5, 4) * size / 64
    angle = rng.uniform(0.6, 1.4) * np.pi  # where the right ventricle sits
    bright, myo = rng.uniform(0.75, 0.95), rng.uniform(0.25, 0.4)
    images, labels = [], []
    for z in range(depth):
        shrink = 1.0 - 0.5 * z / max(depth - 1, 1)  # base to apex
        r = r_lv * shrink
        d = np.hypot(yy - cy, xx - cx)
        label = np.zeros((size, size), np.uint8)
        rv_r = (r + wall) * 1.1
        off = r + wall * 0.6
        ry, rx = cy + off * np.sin(angle), cx + off * np.cos(angle)
        if z < depth - 1:
            label[np.hypot(yy - ry, xx - rx) < rv_r] = 1
        label[d < r + wall] = 2
        label[d < r] = 3
        body = ((yy - size / 2) / (0.45 * size)) ** 2 + ((xx - size / 2) / (0.4 * size)) ** 2 < 1
        image = np.where(body, 0.2, 0.02).astype(np.float32)
        image[label == 1] = bright - 0.08
        image[label == 2] = myo
        image[label == 3] = bright
        image += rng.normal(0, 0.05, image.shape).astype(np.float32)
        images.append(np.clip(image, 0, 1))
        labels.append(label)
    return np.stack(images), np.stack(labels)


def _save(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def _write(root: Path, seed: int) -> None:
    cases = {}
    for part, count in (("train", NUM_TRAIN_CASES), ("val", NUM_VAL_CASES)):
        for i in range(count):
            name = f"{part}{i:03d}_frame01"
            part_key = 0 if part == "train" else 1
            cases[name] = draw_case(np.random.default_rng([seed, part_key, i]))
    train, val = [], []
    for name, (image, label) in cases.items():
        if name.startswith("train"):
            slices = []
            for z in range(image.shape[0]):
                rel = f"data/slices/{name}_slice_{z}.h5"
                _save(root / rel, image[z], label[z])
                slices.append(Sample(rel, None))
            train.append(slices)
        else:
            rel = f"data/{name}.h5"
            _save(root / rel, image, label)
            val.append(Sample(rel, None))
    order = np.random.default_rng([seed, 2]).permutation(len(train))
    for n in SPLITS:  # nested: the first n cases of one permutation
        labeled = [s for i in order[:n] for s in train[i]]
        unlabeled = [s for i in order[n:] for s in train[i]]
        write_split(root / "splits", n, labeled, unlabeled)
    write_list(root / "splits" / "val.txt", val)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))


def ensure(root: Path, seed: int = 0) -> Path:
    """Generate the toy ACDC into `root` unless a complete one of this version is there."""
    stamp = f"{VERSION} seed={seed}\n"
    return generate_once(root, "toy ACDC", lambda tmp: _write(tmp, seed), stamp, VERSION_FILE)
