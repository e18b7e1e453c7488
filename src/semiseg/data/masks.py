"""Masks as class indices, the way each dataset stores them.

A mask file holds one value per pixel: single-channel PNGs hold it directly, palette PNGs hold it
as the palette index (never the RGB colour), and RGB colour masks are decoded through the
dataset's palette when `dataset.palette` is set. The dataset's `label_map` then maps file values
to classes (ADE20K: 0 -> 255, 1..150 -> 0..149), and every value must be a class or 255.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data import palettes
from semiseg.data.image_files import too_large, upright
from semiseg.data.splits import SplitError

IGNORE = 255

# Cityscapes labelIds -> trainIds (the official table; every other id, e.g. 0..6 'void' and
# 'ego vehicle', 9/10 parking and rail track, 14-16 and 18 guard rail/bridge/tunnel/polegroup,
# 29/30 caravan and trailer, is ignored).
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
# SYNTHIA (RAND-CITYSCAPES) class ids, the first channel of GT/LABELS/*.png -> Cityscapes
# trainIds: the table of tools/convert_datasets/synthia.py in FST (usr922/FST) and DAFormer
# ("mapping based on README.txt from SYNTHIA_RAND_CITYSCAPES"). 16 terrain, 18 truck and 20 train
# do not occur in SYNTHIA (hence the 16-class protocol); 0 void, 13 parking slot, 14 road work
# and 22 lane marking are ignored.
SYNTHIA_ID_TO_TRAIN_ID = {
    3: 0,  # road
    4: 1,  # sidewalk
    2: 2,  # building
    21: 3,  # wall
    5: 4,  # fence
    7: 5,  # pole
    15: 6,  # traffic light
    9: 7,  # traffic sign
    6: 8,  # vegetation
    16: 9,  # terrain (absent from SYNTHIA)
    1: 10,  # sky
    10: 11,  # pedestrian -> person
    17: 12,  # rider
    8: 13,  # car
    18: 14,  # truck (absent from SYNTHIA)
    19: 15,  # bus
    20: 16,  # train (absent from SYNTHIA)
    12: 17,  # motorcycle
    11: 18,  # bicycle
}
# GTA5's labels/*.png hold Cityscapes labelIds (palette PNGs: the index is the id), so GTA5 uses
# `cityscapes_ids`; FST's tools/convert_datasets/gta.py applies the same 19-entry table.
ID_TABLES = {"cityscapes_ids": CITYSCAPES_ID_TO_TRAIN_ID, "synthia_ids": SYNTHIA_ID_TO_TRAIN_ID}
LABEL_MAPS = ("reduce_zero", *ID_TABLES)


def label_map_table(spec) -> np.ndarray | None:
    """A 256-entry uint8 lookup table for `dataset.label_map`, or None for no mapping.

    - null: file values are the classes;
    - `reduce_zero`: 0 ("other") -> 255, v -> v - 1 (ADE20K's 150 classes from 1..150);
    - `cityscapes_ids`: raw Cityscapes labelIds (also GTA5's) -> trainIds, others 255;
    - `synthia_ids`: SYNTHIA RAND-CITYSCAPES class ids -> Cityscapes trainIds, others 255;
    - a mapping {file value: class}: listed values change, the others stay.
    """
    if spec is None or spec in ("none", "null", "identity"):
        return None
    table = np.arange(256, dtype=np.uint8)
    if spec == "reduce_zero":
        table = (np.arange(256) - 1).astype(np.uint8)
        table[0] = IGNORE
        table[IGNORE] = IGNORE
        return table
    if isinstance(spec, str) and spec in ID_TABLES:
        table[:] = IGNORE
        for raw, train_id in ID_TABLES[spec].items():
            table[raw] = train_id
        return table
    if isinstance(spec, Mapping):
        for raw, value in spec.items():
            try:
                raw, value = int(raw), int(value)
            except (TypeError, ValueError):
                raw = value = -1
            if not (0 <= raw <= 255 and 0 <= value <= 255):
                raise SplitError(
                    f"dataset.label_map entry {raw!r}: {value!r} must map a value in 0..255 "
                    "to a class index or 255"
                )
            table[raw] = value
        return table
    raise SplitError(
        f"unknown dataset.label_map {spec!r}: use null, {', '.join(LABEL_MAPS)}, or a mapping "
        "{file value: class}"
    )


def _is_16bit_colour(img: Image.Image) -> bool:
    """A PNG with 16 bits per colour channel: PIL would keep only each value's high byte (class
    ids below 256 would all read as 0), so these are decoded with torchvision instead."""
    return img.mode in ("RGB", "RGBA") and any(
        str(getattr(tile, "args", "") or "").endswith(";16B") for tile in img.tile
    )


def _read_16bit_channel(path: Path, channel: int) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_png, read_file

    try:
        decoded = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except (OSError, RuntimeError) as e:
        raise SplitError(f"cannot read mask {path}: {e}") from None
    if channel >= decoded.shape[0]:
        raise SplitError(
            f"mask {path} has {decoded.shape[0]} channels, dataset.mask_channel is {channel}"
        )
    return decoded[channel].to(torch.int32).numpy()


def read_values(
    path: Path,
    colours: np.ndarray | None = None,
    num_classes: int | None = None,
    channel: int | None = None,
):
    """The raw per-pixel values of a mask file as a uint8 array.

    `channel`: the value is this channel of a colour mask (SYNTHIA's GT/LABELS: the class id in
    the first channel of a 16-bit PNG, the instance id in the second).
    """
    try:
        with Image.open(path) as img:
            wide = _is_16bit_colour(img)
            if not wide:
                img.load()
    except Image.DecompressionBombError as e:
        raise too_large(path, "mask", e) from None
    except OSError as e:
        raise SplitError(f"cannot read mask {path}: {e}") from None
    if not wide:
        img = upright(img)  # turned by its EXIF orientation, as its image
    mode = img.mode
    if wide:
        if channel is None:
            raise SplitError(
                f"mask {path} is a 16-bit colour PNG; set dataset.mask_channel to the channel "
                "that holds the class (SYNTHIA: 0)"
            )
        return _checked(path, _read_16bit_channel(path, channel))
    if channel is not None and mode in ("RGB", "RGBA", "LA"):
        return np.asarray(img)[..., channel]
    if mode in ("L", "P", "1") or mode.startswith("I"):
        return _checked(path, np.asarray(img))
    if mode == "LA":
        return np.asarray(img.getchannel("L"))
    if mode in ("RGB", "RGBA") and colours is not None:
        rgb = np.asarray(img.convert("RGB"))
        return palettes.decode_colours(rgb, colours, num_classes or 255, path)
    raise SplitError(
        f"mask {path} has mode {mode}; masks must be single-channel or palette PNGs holding "
        "class indices (for RGB colour masks set dataset.palette to the class colours)"
    )


def _checked(path: Path, values: np.ndarray) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > 255):
        raise SplitError(
            f"mask {path} has values {values.min()}..{values.max()}; class indices must fit "
            "in 0..255 (255 = ignore)"
        )
    return values.astype(np.uint8, copy=False)


class MaskReader:
    """Reads a mask file as an 'L' image of class indices: raw values, the label map, and (when
    num_classes is given) a check that every value is a class or 255, naming file and value.

    A plain object (numpy tables only), so DataLoader workers can pickle it.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        label_map=None,
        palette=None,
        check: bool = True,
        channel: int | None = None,
    ):
        self.num_classes = num_classes
        self.channel = channel
        self.label_map = label_map
        self.table = label_map_table(label_map)
        # colour decoding only when the config names the colours; a generated palette would
        # turn a wrong mask into a confusing "unknown colour" error
        self.colours = None if palette is None else palettes.resolve(palette, num_classes)
        self.valid = None
        if check and num_classes is not None:
            valid = np.zeros(256, dtype=bool)
            valid[:num_classes] = True
            valid[IGNORE] = True
            # validity of each RAW value, so errors name the value that is in the file
            self.valid = valid if self.table is None else valid[self.table]

    def values(self, path: Path) -> np.ndarray:
        raw = read_values(path, self.colours, self.num_classes, self.channel)
        if self.valid is not None:
            bad = ~self.valid[raw]
            if bad.any():
                raise SplitError(self._bad_value_message(path, np.unique(raw[bad])))
        return raw if self.table is None else self.table[raw]

    def __call__(self, path: Path) -> Image.Image:
        return Image.fromarray(self.values(path))

    def _bad_value_message(self, path, bad_values) -> str:
        first = int(bad_values[0])
        mapped = ""
        if self.table is not None:
            mapped = f" ({int(self.table[first])} after label_map {self.label_map})"
        others = ""
        if len(bad_values) > 1:
            shown = ", ".join(str(int(v)) for v in bad_values[1:4])
            more = ", ..." if len(bad_values) > 4 else ""
            others = f" (other bad values: {shown}{more})"
        return (
            f"mask {path} holds value {first}{mapped}{others}, which is neither a class "
            f"(0..{self.num_classes - 1}) nor 255 (ignore); fix the mask, the class list or "
            "dataset.label_map"
        )
