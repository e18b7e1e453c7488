"""A tiny synthetic stand-in for WHU-CD / LEVIR-CD, generated on first use (`dataset=cd_toy`).

Pairs of SIZE x SIZE aerial-like images in the layout of `data/change.py`: a mottled ground of
two land covers crossed by a road, with rectangular buildings (bright roofs, a dark shadow on
one side). The second image is the first taken at another time: other light (a global gain and
colour cast), its own sensor noise, and change: a few new buildings (the usual case in WHU-CD and
LEVIR-CD) and now and then one demolished. The change mask marks both (0 / 255). Pairs without
any change occur, as in the public tiles. Splits 10%, 20%, 40% (nested) of the training pairs,
as the public splits are named; test.txt is evaluated, val.txt is written as the public tree has
one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data.splits import Sample, write_list
from semiseg.data.toy import generate_once, stamp_is

VERSION = "cd-toy-1"
VERSION_FILE = ".cd_toy_version"
SIZE = 64
NUM_TRAIN = 40
NUM_VAL = 8
NUM_TEST = 12
SPLITS = ("10%", "20%", "40%")


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float ground: two land covers in smooth blobs and a road."""
    coarse = rng.normal(size=(size // 8 + 1, size // 8 + 1))
    blobs = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    field, grass = rng.uniform(0.35, 0.55, 3), rng.uniform(0.2, 0.35, 3) * (0.8, 1.2, 0.7)
    ground = np.where((blobs > 0)[..., None], field, grass)
    ground += rng.normal(0, 0.03, (size, size, 3))
    road = rng.integers(size // 4, 3 * size // 4)
    width = rng.integers(3, 6)
    if rng.random() < 0.5:
        ground[road : road + width] = 0.55
    else:
        ground[:, road : road + width] = 0.55
    return ground


def _buildings(rng: np.random.Generator, size: int, count: int) -> list[tuple[int, ...]]:
    """Non-overlapping rectangles (y, x, h, w), kept off each other by a 2 px margin."""
    taken = np.zeros((size, size), bool)
    boxes = []
    for _ in range(count * 10):
        if len(boxes) == count:
            break
        h, w = rng.integers(6, 15, 2)
        y, x = rng.integers(1, size - h - 1), rng.integers(1, size - w - 1)
        if taken[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2].any():
            continue
        taken[y : y + h, x : x + w] = True
        boxes.append((int(y), int(x), int(h), int(w)))
    return boxes


def _draw(ground: np.ndarray, boxes, roofs) -> np.ndarray:
    image = ground.copy()
    for (y, x, h, w), roof in zip(boxes, roofs, strict=True):
        image[y + h : y + h + 2, x + 1 : x + w + 1] *= 0.5  # shadow below the roof
        image[y : y + h, x : x + w] = roof
    return image


def _to_png(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="RGB")


def draw_pair(rng: np.random.Generator, size: int = SIZE):
    """(A, B, change mask uint8 0/255) of one synthetic pair."""
    ground = _ground(rng, size)
    boxes = _buildings(rng, size, int(rng.integers(3, 9)))
    roofs = [rng.uniform(0.7, 0.95) * rng.uniform(0.85, 1.0, 3) for _ in boxes]
    new = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2]))
    existing = len(boxes) - new
    before, after = list(range(existing)), list(range(len(boxes)))
    demolished = existing > 2 and rng.random() < 0.25
    if demolished:
        after.remove(0)
    image_a = _draw(ground, [boxes[i] for i in before], [roofs[i] for i in before])
    image_b = _draw(ground, [boxes[i] for i in after], [roofs[i] for i in after])
    image_b = image_b * rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)  # other light
    image_a = image_a + rng.normal(0, 0.02, image_a.shape)
    image_b = image_b + rng.normal(0, 0.02, image_b.shape)
    change = np.zeros((size, size), np.uint8)
    for i in set(before) ^ set(after):
        y, x, h, w = boxes[i]
        change[y : y + h, x : x + w] = 255
    return _to_png(image_a), _to_png(image_b), Image.fromarray(change, mode="L")


def _write(root: Path, seed: int) -> None:
    parts = {}
    for part_key, (part, count) in enumerate(
        (("train", NUM_TRAIN), ("val", NUM_VAL), ("test", NUM_TEST))
    ):
        names = []
        for i in range(count):
            name = f"{part}_{i:03d}.png"
            a, b, change = draw_pair(np.random.default_rng([seed, part_key, i]))
            for folder, image in (("A", a), ("B", b), ("label", change)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                image.save(root / folder / name)
            names.append(Sample(name, None))
        parts[part] = names
        write_list(root / "splits" / f"{part}.txt", names)
    train = parts["train"]
    order = np.random.default_rng([seed, 3]).permutation(len(train))
    for split in SPLITS:  # nested: the first n pairs of one permutation
        n = round(len(train) * int(split.rstrip("%")) / 100)
        write_list(root / "splits" / split / "labeled.txt", [train[i] for i in order[:n]])
        write_list(root / "splits" / split / "unlabeled.txt", [train[i] for i in order[n:]])


def _stamp(seed: int) -> str:
    return f"{VERSION} seed={seed}\n"


def is_current(root: Path, seed: int = 0) -> bool:
    return stamp_is(Path(root) / VERSION_FILE, _stamp(seed))


def ensure(root: Path, seed: int = 0) -> Path:
    """Generate the toy change-detection dataset into `root` unless this version is there."""
    write = lambda tmp: _write(tmp, seed)  # noqa: E731
    return generate_once(root, "toy change-detection", write, _stamp(seed), VERSION_FILE)
