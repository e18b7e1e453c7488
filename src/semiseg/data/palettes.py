"""Class colours: `dataset.palette` names them (`voc`, `cityscapes`), lists them, or is null.

A palette is a (256, 3) uint8 table indexed by class value, so entry 255 is the colour of ignored
pixels. It colours predictions for viewing (`colorize`, `save_index_png`) and decodes masks
that were saved as RGB colour images back to class indices (`decode_colours`).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data.splits import SplitError

IGNORE = 255

# The 19 Cityscapes training classes in trainId order (road ... bicycle).
CITYSCAPES = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
NAMED = ("voc", "cityscapes")


def voc() -> np.ndarray:
    """The Pascal VOC colour map: the bits of the index spread over the high bits of R, G, B.

    Index 0 is black, 1 is (128, 0, 0), ... and 255 (the boundary/ignore label) is (224, 224, 192).
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, colour = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        table[index] = colour
    return table


def generated(num_classes: int = 255) -> np.ndarray:
    """Distinct colours for any class count: black background, hues spaced by the golden ratio,
    two alternating brightness levels; white for ignored pixels."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for index in range(1, 255):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 else 0.7
        saturation = 0.55 + 0.4 * ((index // 2) % 2)
        table[index] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)]
    table[IGNORE] = (255, 255, 255)
    return table


def resolve(spec, num_classes: int | None = None) -> np.ndarray:
    """The (256, 3) table for a `dataset.palette` value: a name, a list of [r, g, b], or null."""
    if spec is None:
        return generated()
    if isinstance(spec, str):
        if spec == "voc":
            return voc()
        if spec == "cityscapes":
            table = generated()
            table[: len(CITYSCAPES)] = CITYSCAPES
            table[IGNORE] = (0, 0, 0)
            return table
        raise SplitError(
            f"unknown dataset.palette {spec!r}: use {', '.join(NAMED)}, a list of [r, g, b] "
            "colours (one per class), or null for generated colours"
        )
    colours = _colour_list(spec)
    if num_classes is not None and len(colours) < num_classes:
        raise SplitError(
            f"dataset.palette lists {len(colours)} colours but the dataset has {num_classes} "
            "classes: give one [r, g, b] per class"
        )
    table = generated()
    table[: len(colours)] = colours
    return table


def _colour_list(spec) -> list[tuple[int, int, int]]:
    colours = []
    for item in spec if isinstance(spec, Sequence) else [spec]:
        try:
            colour = tuple(int(c) for c in item)
        except (TypeError, ValueError):
            colour = ()
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise SplitError(f"dataset.palette entry {item!r} is not an [r, g, b] of 0..255")
        colours.append(colour)
    if len(colours) > 255:
        raise SplitError(f"dataset.palette lists {len(colours)} colours; at most 255 classes fit")
    return colours


def colorize(index: np.ndarray, table: np.ndarray) -> Image.Image:
    """An RGB image of a class-index array."""
    return Image.fromarray(table[np.asarray(index, dtype=np.uint8)])


def save_index_png(path: Path, index: np.ndarray, table: np.ndarray) -> None:
    """A palette PNG: the pixel values are the class indices (read back as such), and viewers
    show the palette's colours."""
    image = Image.fromarray(np.asarray(index, dtype=np.uint8))  # "L"; putpalette makes it "P"
    image.putpalette(table.reshape(-1).tolist())
    image.save(path)


def decode_colours(rgb: np.ndarray, table: np.ndarray, num_classes: int, path) -> np.ndarray:
    """Class indices of an (H, W, 3) colour mask: each colour must be one of the palette's
    class colours (0..num_classes-1) or its ignore colour (entry 255)."""
    lookup = {}
    for value in [*range(num_classes), IGNORE]:
        lookup.setdefault(int(_key(table[value])), value)
    keys = _key(rgb.reshape(-1, 3))
    unique, inverse = np.unique(keys, return_inverse=True)
    values = np.empty(len(unique), dtype=np.uint8)
    for i, key in enumerate(unique.tolist()):
        if key not in lookup:
            r, g, b = key >> 16, (key >> 8) & 255, key & 255
            raise SplitError(
                f"mask {path} has colour ({r}, {g}, {b}), which is not in dataset.palette "
                f"({len(unique)} colours in the file); masks must use the class colours or the "
                "ignore colour, or be saved as class indices"
            )
        values[i] = lookup[key]
    return values[inverse].reshape(rgb.shape[:2])


def _key(rgb: np.ndarray):
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
