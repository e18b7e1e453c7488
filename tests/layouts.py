"""Tiny datasets in the exact on-disk layouts of the benchmarks (and of `dataset=custom`).

Every builder writes a few small images with masks in the dataset's own format (VOC palette
PNGs, Cityscapes raw labelIds, COCO instance JSON, ADE20K 0..150 annotations, plain folders) and
the split files the public UniMatch trees use (fraction-named folders such as `1_16/`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data import palettes

# The 80 COCO category ids (1..90 with gaps), in the order of instances_*.json.
COCO_CATEGORY_IDS = [
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
]


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _regions(size: tuple[int, int], values: list[int], seed: int) -> np.ndarray:
    """Vertical bands of the given values (so every value occurs), shuffled by seed."""
    w, h = size
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(values))
    mask = np.zeros((h, w), dtype=np.uint8)
    for k, i in enumerate(order):
        mask[:, k * w // len(values) : (k + 1) * w // len(values)] = values[i]
    return mask


def _mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)


def _lines(path: Path, pairs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(p for p in pair if p) + "\n" for pair in pairs))


def pascal(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    """VOC palette PNGs in SegmentationClass/ (VOC images), single-channel SegmentationClassAug/
    for the SBD-only ones; the split files name SegmentationClass/ for all, as UniMatch's do."""
    size = (40, 32)
    table = palettes.voc()
    names = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for i, name in enumerate(names):
        _image(root / "JPEGImages" / f"{name}.jpg", size, i)
        values = _regions(size, [0, 1 + i % 20, 15, 255], i)
        if i % 2 == 0 or i >= n_train:  # VOC image: palette PNG
            path = root / "SegmentationClass" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            palettes.save_index_png(path, values, table)
        else:  # SBD-only image: single-channel mask in SegmentationClassAug/
            _mask(root / "SegmentationClassAug" / f"{name}.png", values)
    pairs = [(f"JPEGImages/{n}.jpg", f"SegmentationClass/{n}.png") for n in names]
    _lines(root / "splits" / "1_16" / "labeled.txt", pairs[:2])
    _lines(root / "splits" / "1_16" / "unlabeled.txt", pairs[2:n_train])
    _lines(root / "splits" / "val.txt", pairs[n_train:])
    return root


def cityscapes(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """Raw *_gtFine_labelIds.png only (the trainId files need the prepare command); split files
    name the trainId files, as UniMatch's do."""
    size = (96, 48)
    raw_ids = [0, 1, 7, 8, 11, 21, 23, 24, 26, 33]
    pairs = {"train": [], "val": []}
    for i in range(n_train + n_val):
        part, city = ("train", "aachen") if i < n_train else ("val", "frankfurt")
        stem = f"{city}_{i:06d}_000019"
        image = Path("leftImg8bit") / part / city / f"{stem}_leftImg8bit.png"
        _image(root / image, size, 100 + i)
        _mask(
            root / "gtFine" / part / city / f"{stem}_gtFine_labelIds.png",
            _regions(size, raw_ids, 100 + i),
        )
        pairs[part].append(
            (image.as_posix(), f"gtFine/{part}/{city}/{stem}_gtFine_labelTrainIds.png")
        )
    _lines(root / "splits" / "1_30" / "labeled.txt", pairs["train"][:2])
    _lines(root / "splits" / "1_30" / "unlabeled.txt", pairs["train"][2:])
    return root


def _polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def coco(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """train2017/, val2017/ and annotations/instances_*.json with polygons, overlapping
    instances and a crowd RLE; the masks need the prepare command."""
    w, h = 40, 30
    categories = [
        {"id": c, "name": f"category_{c}", "supercategory": "x"} for c in COCO_CATEGORY_IDS
    ]
    ann_id = 0
    train_pairs = []
    for image_set, ids in (
        ("train2017", range(1, n_train + 1)),
        ("val2017", range(101, 101 + n_val)),
    ):
        images, annotations = [], []
        for image_id in ids:
            name = f"{image_id:012d}.jpg"
            _image(root / image_set / name, (w, h), image_id)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            # person (id 1 -> class 1) left, toothbrush (id 90 -> class 80) overlapping it later
            for cat, box in ((1, (2, 2, 20, 20)), (90, (15, 5, 30, 25))):
                ann_id += 1
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cat,
                        "segmentation": _polygon(*box),
                        "area": float((box[2] - box[0]) * (box[3] - box[1])),
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "iscrowd": 0,
                    }
                )
            # a crowd region in the bottom-right corner, uncompressed RLE (column-major runs)
            crowd = np.zeros((h, w), dtype=np.uint8)
            crowd[26:, 34:] = 1
            ann_id += 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 3,
                    "segmentation": {"counts": _rle_counts(crowd), "size": [h, w]},
                    "area": float(crowd.sum()),
                    "bbox": [34, 26, 6, 4],
                    "iscrowd": 1,
                }
            )
            if image_set == "train2017":
                train_pairs.append((f"train2017/{name}", f"masks/{image_id:012d}.png"))
        path = root / "annotations" / f"instances_{image_set}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    _lines(root / "splits" / "1_512" / "labeled.txt", train_pairs[:2])
    _lines(root / "splits" / "1_512" / "unlabeled.txt", train_pairs[2:])
    return root


def _rle_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def ade20k(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """ADEChallengeData2016: annotations hold 0 ("other") and 1..150; val.txt needs the prepare
    command."""
    size = (40, 32)
    pairs = []
    for i in range(n_train + n_val):
        part, prefix = ("training", "ADE_train") if i < n_train else ("validation", "ADE_val")
        name = f"{prefix}_{i + 1:08d}"
        _image(root / "images" / part / f"{name}.jpg", size, 200 + i)
        _mask(root / "annotations" / part / f"{name}.png", _regions(size, [0, 1, 150, 1 + i], i))
        if part == "training":
            pairs.append((f"images/training/{name}.jpg", f"annotations/training/{name}.png"))
    _lines(root / "splits" / "1_64" / "labeled.txt", pairs[:2])
    _lines(root / "splits" / "1_64" / "unlabeled.txt", pairs[2:])
    return root


def custom_folders(root: Path, n_masked: int = 10, n_unmasked: int = 2) -> Path:
    """A plain images/ + masks/ pair and classes.txt; a few images have no mask."""
    size = (36, 28)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nleaf\nstem\n")
    for i in range(n_masked + n_unmasked):
        _image(root / "images" / f"plant_{i:03d}.png", size, 300 + i)
        if i < n_masked:
            _mask(root / "masks" / f"plant_{i:03d}.png", _regions(size, [0, 1, 2, 255], i))
    return root


# GTA5 label ids chosen to cover the mapping: mapped ids and ids that become 255 (0 unlabeled,
# 1 ego vehicle, 9 parking, 10 rail track, 15 bridge, 29 caravan, 30 trailer, 34 beyond the table).
GTA5_IDS = [0, 1, 7, 8, 9, 10, 11, 15, 17, 21, 24, 26, 29, 30, 31, 33, 34]


def gta5(root: Path, n: int = 4) -> Path:
    """images/*.png and labels/*.png (palette PNGs whose index is the Cityscapes label id), as
    the public GTA5 download; no split files."""
    size = (64, 36)
    table = palettes.voc()
    for i in range(n):
        _image(root / "images" / f"{i + 1:05d}.png", size, 400 + i)
        path = root / "labels" / f"{i + 1:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        palettes.save_index_png(path, _regions(size, GTA5_IDS, 400 + i), table)
    return root


# SYNTHIA class ids: every id of its README table (0..22) except a few, so both mapped ids and
# ignored ones (0 void, 13 parking slot, 14 road work, 22 lane marking) occur.
SYNTHIA_IDS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 19, 21, 22]


def save_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): values is (H, W, 3) of uint16."""
    import struct
    import zlib

    h, w, channels = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def synthia_label(size: tuple[int, int], seed: int) -> np.ndarray:
    """GT/LABELS content: class id in channel 0, an instance id (often > 255) in channel 1."""
    w, h = size
    label = np.zeros((h, w, 3), dtype=np.uint16)
    label[..., 0] = _regions(size, SYNTHIA_IDS, seed)
    label[..., 1] = (np.arange(w)[None, :] * 97 + seed) % 4000
    return label


def synthia(root: Path, n: int = 4) -> Path:
    """RGB/*.png and GT/LABELS/*.png (16-bit, 3 channels), as SYNTHIA-RAND-CITYSCAPES is
    downloaded; no split files."""
    size = (80, 48)
    for i in range(n):
        name = f"{i:07d}.png"
        _image(root / "RGB" / name, size, 500 + i)
        save_png16(root / "GT" / "LABELS" / name, synthia_label(size, 500 + i))
    return root


def _h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8))


def acdc_label(shape: tuple[int, ...], seed: int, classes=(0, 1, 2, 3)) -> np.ndarray:
    """Bands of the given classes along the last axis, shifted by seed."""
    width = shape[-1]
    bands = (np.arange(width) * len(classes) // width + seed) % len(classes)
    return np.broadcast_to(np.asarray(classes)[bands], shape).copy()


def acdc(root: Path, cases: int = 4, slices: int = 3, val: int = 2) -> Path:
    """The public UniMatch ACDC tree: data/slices/patientNNN_frame01_slice_K.h5 (2D, image =
    label / 3 so an augmentation that keeps them aligned keeps that relation),
    data/patientNNN_frame01.h5 validation volumes (D, H, W) of another in-plane size (the last
    has no right ventricle, class 1), and splits/{1,3}/labeled.txt, unlabeled.txt, val.txt and
    valtest.txt (what dataset=acdc validates on; here the same volumes) one file per line."""
    train = []
    for c in range(cases):
        names = []
        for k in range(slices):
            label = acdc_label((40, 48), seed=c + k)
            rel = f"data/slices/patient{c + 1:03d}_frame01_slice_{k}.h5"
            _h5(root / rel, label / 3.0, label)
            names.append(rel)
        train.append(names)
    val_names = []
    for v in range(val):
        classes = (0, 1, 2, 3) if v < val - 1 else (0, 2, 3)
        label = acdc_label((4, 36, 44), seed=v, classes=classes)
        rel = f"data/patient{90 + v:03d}_frame01.h5"
        _h5(root / rel, label / 3.0, label)
        val_names.append(rel)
    for n in (1, 3):
        folder = root / "splits" / str(n)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labeled.txt").write_text("".join(f"{r}\n" for c in train[:n] for r in c))
        (folder / "unlabeled.txt").write_text("".join(f"{r}\n" for c in train[n:] for r in c))
    for name in ("val.txt", "valtest.txt"):
        (root / "splits" / name).write_text("".join(f"{r}\n" for r in val_names))
    return root


def change_pair(size: int, seed: int, changed: bool = True):
    """(A, B, label 0/255) of a synthetic change: B is A with another light and, if `changed`,
    a bright square that A does not have."""
    rng = np.random.default_rng(seed)
    a = rng.integers(40, 160, (size, size, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    label = np.zeros((size, size), np.uint8)
    if changed:
        y, x = rng.integers(0, size // 2, 2)
        side = size // 3
        b[y : y + side, x : x + side] = 230
        label[y : y + side, x : x + side] = 255
    return a, b, label


def change_detection(root: Path, style: str = "whu", n_train: int = 6, n_test: int = 2) -> Path:
    """The public remote-sensing tree: A/, B/, label/ (0/255) with one file name per pair, and
    splits/{5%,20%}/labeled.txt, unlabeled.txt, train.txt, val.txt, test.txt listing names.
    `style` names the files as WHU-CD (whucd_00001.png) or LEVIR-CD (train_3_7.png) does; the
    last test pair has no change."""

    def name(part, i):
        return (
            f"whucd_{i + (0 if part == 'train' else 500):05d}.png"
            if style == "whu"
            else (f"{part}_{i + 1}_{i % 4 + 1}.png")
        )

    parts = {"train": n_train, "val": 1, "test": n_test}
    names = {part: [name(part, i) for i in range(n)] for part, n in parts.items()}
    for seed, (part, files) in enumerate(names.items()):
        for i, file in enumerate(files):
            changed = not (part == "test" and i == len(files) - 1)
            for folder, array in zip(
                ("A", "B", "label"), change_pair(32, 100 * seed + i, changed), strict=True
            ):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / file)
    splits = root / "splits"
    for part, files in names.items():
        _lines(splits / f"{part}.txt", [(f,) for f in files])
    for split, n in (("5%", 2), ("20%", 3)):
        _lines(splits / split / "labeled.txt", [(f,) for f in names["train"][:n]])
        _lines(splits / split / "unlabeled.txt", [(f,) for f in names["train"][n:]])
    return root
