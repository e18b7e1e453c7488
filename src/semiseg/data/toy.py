"""The embedded toy dataset: a small but real semi-supervised segmentation task.

Objects of five classes are told apart by shape and texture only. Each texture is a pattern of
light and dark (a random hue and a dark shade of it), so the class survives what UniMatch's
strong views do to an image (colour jitter, grayscale, blur), while the hue itself says nothing.
Periods of 6-12 px stay visible at half scale. A ResNet-18 trained from scratch learns the task
from 480 labeled images (about 67 mIoU after 1000 steps); from 10-20 it overfits, and the ~500
unlabeled images are there to help. Generation is deterministic for a seed and takes seconds.

Domains (domain adaptation tests, `source=toy_shifted`): `shifted` draws other images of the
same kind (shapes, textures, layout statistics) and then tints them warm with half the contrast:
red over blue everywhere, as a game engine's colours differ from a camera's. The labels mean the
same; only the colour statistics move.

Layout (the split-file format of every other dataset):
    images/{train,val}_NNNN.png   RGB, sides 112..144 px
    masks/{train,val}_NNNN.png    single-channel class indices
    classes.txt                   one class name per line
    splits/<n>/labeled.txt, unlabeled.txt for n in SPLITS (nested labeled sets), splits/val.txt
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data.splits import Sample, SplitError, write_list, write_split

VERSION = "2"  # bump whenever the images change: old copies are regenerated
VERSION_FILE = ".toy_version"
CLASSES = (
    "background",
    "striped_disc",
    "checkered_square",
    "dotted_triangle",
    "noisy_ring",
    "gridded_cross",
)
NUM_TRAIN = 500
NUM_VAL = 100
SPLITS = (10, 20, 40)
SIDE_RANGE = (112, 144)
_OWN_NAMES = {"images", "masks", "splits", "classes.txt", VERSION_FILE}
DEFAULT_DOMAIN = "default"
# domain -> (key mixed into every image's generator, tint: image * scale + offset per channel)
DOMAINS = {
    DEFAULT_DOMAIN: ((), None),
    "shifted": ((1,), (0.5, np.array([0.5, 0.3, 0.0], dtype=np.float32))),
}


# Shapes: (a, b) are pixel offsets from the centre in the object's rotated frame, r its size.
def _disc(a, b, r, rng):
    return a * a + b * b <= r * r


def _square(a, b, r, rng):
    return np.maximum(np.abs(a), np.abs(b)) <= 0.8 * r


def _triangle(a, b, r, rng):
    # equilateral, circumradius 1.25 r (so its area is close to the other shapes')
    inside = np.ones(np.broadcast_shapes(a.shape, b.shape), dtype=bool)
    for angle in (0.0, 2 * np.pi / 3, 4 * np.pi / 3):
        inside &= a * np.cos(angle) + b * np.sin(angle) <= 0.625 * r
    return inside


def _ring(a, b, r, rng):
    d2 = a * a + b * b
    inner = rng.uniform(0.45, 0.65) * r
    return (d2 <= r * r) & (d2 >= inner * inner)


def _cross(a, b, r, rng):
    arm = rng.uniform(0.25, 0.35) * r
    a, b = np.abs(a), np.abs(b)
    return ((a <= arm) & (b <= r)) | ((b <= arm) & (a <= r))


# Textures: (u, v) are coordinates in a randomly rotated and shifted frame; True = first colour.
def _stripes(u, v, period, rng):
    return (u / period) % 1.0 < 0.5


def _checker(u, v, period, rng):
    return (np.floor(u / period) + np.floor(v / period)) % 2 == 0


def _dots(u, v, period, rng):
    du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
    return du * du + dv * dv < 0.09


def _noise(u, v, period, rng):
    cell = max(period / 3, 1.5)
    iu, iv = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
    iu, iv = iu - iu.min(), iv - iv.min()
    return (rng.random((iu.max() + 1, iv.max() + 1)) < 0.5)[iu, iv]


def _grid(u, v, period, rng):
    return ((u / period) % 1.0 < 0.25) | ((v / period) % 1.0 < 0.25)


# class index -> (shape, texture), in the order of CLASSES
_OBJECTS = {
    1: (_disc, _stripes),
    2: (_square, _checker),
    3: (_triangle, _dots),
    4: (_ring, _noise),
    5: (_cross, _grid),
}


def _rotated(dx, dy, angle):
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, dy * c - dx * s


def _colour_pair(rng):
    """A light colour of random hue and its shade at a fifth of the brightness.

    A scratch network learns light/dark patterns in a few hundred steps; patterns of two random
    colours (same brightness possible) it had not learned after 1500 steps even from 480 labels.
    """
    light = rng.uniform(0.5, 1, 3)
    return light, 0.2 * light


def _texture(texture, dx, dy, rng):
    period = rng.uniform(6, 12)
    u, v = _rotated(dx, dy, rng.uniform(0, 2 * np.pi))
    return texture(u + rng.uniform(0, period), v + rng.uniform(0, period), period, rng)


def _draw_image(rng, tint=None):
    h, w = (int(s) for s in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
    dy, dx = np.ogrid[0:h, 0:w]
    dy, dx = dy.astype(np.float32), dx.astype(np.float32)

    base = rng.uniform(0.1, 0.9, 3)
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = base
    mask = np.zeros((h, w), dtype=np.uint8)

    for _ in range(rng.integers(1, 5)):  # later objects occlude earlier ones
        cls = int(rng.integers(1, len(CLASSES)))
        shape_fn, texture_fn = _OBJECTS[cls]
        r = rng.uniform(12, 34)
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        # only the window around the object is computed
        ext = int(1.3 * r) + 2
        y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext, h)
        x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext, w)
        oy, ox = dy[y0:y1] - cy, dx[:, x0:x1] - cx
        inside = shape_fn(*_rotated(ox, oy, rng.uniform(0, 2 * np.pi)), r, rng)
        pattern = _texture(texture_fn, ox, oy, rng)
        first, second = _colour_pair(rng)
        colour = np.where(pattern[..., None], first, second).astype(np.float32)
        img[y0:y1, x0:x1][inside] = colour[inside]
        mask[y0:y1, x0:x1][inside] = cls

    if tint is not None:
        scale, offset = tint
        img = img * scale + offset
    # lighting: a brightness ramp in a random direction, then sensor noise
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.8)
    ramp = (dx - w / 2) * np.cos(angle) + (dy - h / 2) * np.sin(angle)
    img *= (1 + strength * ramp / np.hypot(h, w))[..., None]
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def _write(root: Path, seed: int, domain: str = DEFAULT_DOMAIN):
    key, tint = DOMAINS[domain]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lists = {}
    for part_index, (part, count) in enumerate((("train", NUM_TRAIN), ("val", NUM_VAL))):
        samples = []
        for i in range(count):
            # one generator per image: any image can be regenerated on its own
            img, mask = _draw_image(np.random.default_rng([seed, part_index, i, *key]), tint)
            name = f"{part}_{i:04d}.png"
            Image.fromarray(img).save(root / "images" / name)
            Image.fromarray(mask).save(root / "masks" / name)
            samples.append(Sample(f"images/{name}", f"masks/{name}"))
        lists[part] = samples
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))

    train = lists["train"]
    order = np.random.default_rng([seed, 2]).permutation(len(train))
    for n in SPLITS:  # prefixes of one permutation: smaller labeled sets are nested in larger
        labeled = sorted(int(i) for i in order[:n])
        unlabeled = sorted(int(i) for i in order[n:])
        write_split(root / "splits", n, [train[i] for i in labeled], [train[i] for i in unlabeled])
    write_list(root / "splits" / "val.txt", lists["val"])


def _stamp(seed: int, domain: str = DEFAULT_DOMAIN) -> str:
    if domain == DEFAULT_DOMAIN:
        return f"{VERSION} seed={seed}\n"
    return f"{VERSION} seed={seed} domain={domain}\n"


def check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise SplitError(
            f"unknown toy domain {domain!r} (dataset.toy_domain): use one of {', '.join(DOMAINS)}"
        )


def is_current(root: Path, seed: int = 0, domain: str = DEFAULT_DOMAIN) -> bool:
    return stamp_is(Path(root) / VERSION_FILE, _stamp(seed, domain))


@contextlib.contextmanager
def install_lock(root: Path) -> Iterator[None]:
    """Held while one process checks and generates `root`: independent jobs started on a fresh
    clone (a seed sweep, a job array) generate it once, the others wait and then find it
    complete. Without it, a second job would remove the tree the first had just installed
    while the first was reading it. An flock on a file beside `root`: released by the kernel
    when its holder dies, so a killed job never leaves the next one waiting."""
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_atomically(
    root: Path,
    write: Callable[[Path], None],
    stamp: str,
    is_current: Callable[[], bool],
    version_file: str = VERSION_FILE,
) -> None:
    """A generated dataset into `root`: written by `write` into a folder beside it, stamped
    (`version_file`, written last: marks it complete), then renamed over `root`, so an
    interrupted run leaves no half dataset behind."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp"))
    try:
        write(tmp)
        (tmp / version_file).write_text(stamp)
        os.chmod(tmp, 0o755)
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_current():  # another process may have just finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate(root: Path, seed: int = 0, force: bool = False, domain: str = DEFAULT_DOMAIN) -> Path:
    """Write the toy dataset to `root` unless an identical one is already there."""
    check_domain(domain)
    root = Path(root)
    if not force and is_current(root, seed, domain):
        return root
    with install_lock(root):
        if not force and is_current(root, seed, domain):  # another job generated it meanwhile
            return root
        _generate_here(root, seed, domain)
    return root


def _generate_here(root: Path, seed: int, domain: str) -> None:
    if root.exists():
        foreign = sorted({p.name for p in root.iterdir()} - _OWN_NAMES) if root.is_dir() else []
        if foreign or not root.is_dir():
            raise SplitError(
                f"refusing to write the toy dataset to {root}: it holds {foreign or 'a file'} "
                "that the generator did not write; choose an empty or new folder"
            )
    print(f"generating toy dataset in {root} ...", end=" ", flush=True)
    start = time.perf_counter()
    install_atomically(
        root,
        lambda tmp: _write(tmp, seed, domain),
        _stamp(seed, domain),
        lambda: is_current(root, seed, domain),
    )
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)


def ensure(root: Path, seed: int = 0, domain: str = DEFAULT_DOMAIN) -> Path:
    """Generate only when `root` lacks a complete toy dataset of this VERSION, seed and domain."""
    return generate(root, seed=seed, force=False, domain=domain)


def generate_once(
    root: Path, what: str, write: Callable[[Path], None], stamp: str, version_file: str
) -> Path:
    """A generated dataset (`what`, e.g. "toy ACDC") in `root` unless a complete one with this
    `stamp` is there; a folder holding anything else is refused in one line, never overwritten."""
    root = Path(root)
    current = lambda: stamp_is(root / version_file, stamp)  # noqa: E731
    if current():
        return root
    with install_lock(root):
        if current():  # another job generated it meanwhile
            return root
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise SplitError(
                f"refusing to write the {what} dataset to {root}: it holds files the generator "
                "did not write; choose an empty or new folder"
            )
        print(f"generating {what} dataset in {root} ...", flush=True)
        install_atomically(root, write, stamp, current, version_file)
    return root


def stamp_is(path: Path, stamp: str) -> bool:
    """Whether the version file at `path` holds exactly `stamp` (a generator finished there)."""
    try:
        return path.read_text() == stamp
    except OSError:
        return False
