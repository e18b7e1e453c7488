"""The UniMatch V1 augmentations on PIL images and masks.

Randomness comes from Python's `random` and torch's global generator only, which training seeds
per image (data/sampling.py: the same draws in a worker or in the main process).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from semiseg.data.image_files import open_displayed
from semiseg.data.splits import SplitError

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
IGNORE = 255  # mask value of unlabeled or padded pixels
PAD_MARKER = 254  # fill of the unlabeled padding marker, turned into the ignore mask later

_color_jitter = T.ColorJitter(0.5, 0.5, 0.5, 0.25)


def load_image(path: Path) -> Image.Image:
    """An 8-bit RGB image. 16-bit grayscale is scaled to 0..255 (convert("RGB") would clip every
    value above 255 to white); an alpha channel is dropped (the colours are the image, as
    segmentation datasets store them); float images are refused."""
    img = open_displayed(path, "image")  # turned by its EXIF orientation
    if img.mode.startswith("I"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise SplitError(
                f"image {path} has values {values.min()}..{values.max()}: only 8- and 16-bit "
                "images are read; convert it to 8-bit RGB"
            )
        # 0..65535 onto 0..255, rounded (65535 / 255 = 257)
        scaled = (values.astype(np.uint32) + 128) // 257
        img = Image.fromarray(scaled.astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise SplitError(
            f"image {path} holds floating-point values (mode F): convert it to 8-bit RGB"
        )
    return img.convert("RGB")


def load_mask(path: Path) -> Image.Image:
    """Class indices as an 'L' image; palette PNGs give their index, never the RGB colour."""
    img = open_displayed(path, "mask")  # turned by its EXIF orientation, as its image
    if img.mode == "L":
        return img
    if img.mode in ("P", "1") or img.mode.startswith("I"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise SplitError(
                f"mask {path} has values {values.min()}..{values.max()}; class indices must fit "
                "in 0..255 (255 = ignore)"
            )
        return Image.fromarray(values.astype(np.uint8))
    raise SplitError(
        f"mask {path} has mode {img.mode}; masks must be single-channel or palette PNGs holding "
        "class indices (convert colour-coded masks to indices first)"
    )


def long_side_size(w: int, h: int, ratio_range=(0.5, 2.0)) -> tuple[int, int]:
    """A random (width, height): the LONG side randint(lo*L, hi*L), the aspect ratio kept."""
    long_side = random.randint(int(max(w, h) * ratio_range[0]), int(max(w, h) * ratio_range[1]))
    if h > w:
        oh, ow = long_side, int(w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(h * long_side / w + 0.5)
    return max(ow, 1), max(oh, 1)


def resize_long_side(img, masks: list, ratio_range=(0.5, 2.0)):
    """Scale so the LONG side is randint(lo*L, hi*L), keeping the aspect ratio."""
    ow, oh = long_side_size(*img.size, ratio_range)
    img = img.resize((ow, oh), Image.BILINEAR)
    masks = [m.resize((ow, oh), Image.NEAREST) for m in masks]
    return img, masks


def scale_halves_size(w: int, h: int, ratio_range=(0.5, 2.0)) -> tuple[int, int]:
    """A random (width, height) as U2PL's and FST's `RandResize`: a factor drawn with
    probability 1/2 uniformly in [lo, 1), else in [1, hi), both sides int(side * factor)."""
    lo, hi = ratio_range
    if random.random() < 0.5:
        factor = lo + (1.0 - lo) * random.random()
    else:
        factor = 1.0 + (hi - 1.0) * random.random()
    return max(int(w * factor), 1), max(int(h * factor), 1)


# How the random resize draws the new size: UniMatch's long side, or U2PL's/FST's scale factor.
RESIZES = {"long_side": long_side_size, "scale_halves": scale_halves_size}


def random_resize(img, masks: list, mode: str = "long_side"):
    """Resize by RESIZES[mode] (bilinear image, nearest masks), the aspect ratio kept."""
    ow, oh = RESIZES[mode](*img.size)
    img = img.resize((ow, oh), Image.BILINEAR)
    masks = [m.resize((ow, oh), Image.NEAREST) for m in masks]
    return img, masks


def _pad(img, width, height, fill):
    canvas = Image.new(img.mode, (width, height), fill)
    canvas.paste(img, (0, 0))
    return canvas


# The image fill of the crop padding: black (UniMatch) or the mean colour (iMAS's and AugSeg's
# `Crop`: the ImageNet mean x 255 padded into a float array, then truncated by np.uint8).
PAD_FILLS = {"zero": (0, 0, 0), "mean": tuple(int(m * 255) for m in (0.485, 0.456, 0.406))}


def pad_and_crop(img, masks: list, crop_size: int, mask_fills: list[int], fill: str = "zero"):
    """Pad right/bottom up to the crop size (the image with PAD_FILLS[fill]), then take a random
    square crop."""
    w, h = img.size
    if w < crop_size or h < crop_size:
        pw, ph = max(w, crop_size), max(h, crop_size)
        colour = PAD_FILLS[fill]
        img = _pad(img, pw, ph, colour if img.mode == "RGB" else colour[0])
        masks = [_pad(m, pw, ph, fill) for m, fill in zip(masks, mask_fills, strict=True)]
        w, h = pw, ph
    x = random.randint(0, w - crop_size)
    y = random.randint(0, h - crop_size)
    box = (x, y, x + crop_size, y + crop_size)
    return img.crop(box), [m.crop(box) for m in masks]


def hflip(img, masks: list, p=0.5):
    if random.random() < p:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        masks = [m.transpose(Image.FLIP_LEFT_RIGHT) for m in masks]
    return img, masks


def strong_color(img):
    """Colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5); a new image."""
    out = img
    if random.random() < 0.8:
        out = _color_jitter(out)
    if random.random() < 0.2:
        out = out.convert("L").convert("RGB")
    if random.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    return out.copy() if out is img else out


def cutmix_box(size: int, p=0.5) -> torch.Tensor:
    """A size x size uint8 mask, 1 inside one random box (drawn with probability p).

    As in the public UniMatch code: the box area ~ U(0.02, 0.4) * size^2 is drawn once; only the
    aspect ratio ~ U(0.3, 1/0.3) and the top-left corner are redrawn until the box fits. (Redrawing
    the area as well would favour areas that fit easily: mean area 0.14 instead of 0.21 at 321.)
    """
    box = np.zeros((size, size), dtype=np.uint8)
    if random.random() >= p:
        return torch.from_numpy(box)
    area = random.uniform(0.02, 0.4) * size * size
    while True:
        ratio = random.uniform(0.3, 1 / 0.3)
        w = int(math.sqrt(area / ratio))
        h = int(math.sqrt(area * ratio))
        x = random.randrange(size)
        y = random.randrange(size)
        if x + w <= size and y + h <= size:
            break
    box[y : y + h, x : x + w] = 1
    return torch.from_numpy(box)


def normalize(img) -> torch.Tensor:
    # contiguous before the float ops: on the permuted view they run about 50x slower
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return x.float().div_(255).sub_(IMAGENET_MEAN).div_(IMAGENET_STD)


def mask_to_tensor(mask) -> torch.Tensor:
    return torch.from_numpy(np.array(mask, dtype=np.int64))


# ---------------------------------------------------------------- DAFormer's UDA pipelines
# mmseg's Resize(img_scale=(W, H)) with keep_ratio and RandomCrop(cat_max_ratio), as the public
# GTA5/SYNTHIA -> Cityscapes configs of DAFormer and FST run them
# (configs/_base_/datasets/uda_*_to_cityscapes_512x512.py).

CAT_MAX_TRIES = 10  # mmseg's RandomCrop: "Repeat 10 times"


def rescaled_size(w: int, h: int, scale) -> tuple[int, int]:
    """mmcv's rescale_size: the (width, height) that fits `scale` (W, H), aspect kept: factor
    min(long edge of scale / long side, short edge of scale / short side), sides rounded."""
    factor = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def fixed_resize(img, masks: list, scale):
    """mmcv.imrescale of the image (bilinear, cv2's half-pixel rule without antialiasing, rounded
    to 8 bits) and of the masks (nearest, cv2's floor(x * scale) rule) to `rescaled_size`."""
    ow, oh = rescaled_size(*img.size, scale)
    if (ow, oh) == img.size:
        return img, masks
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
    x = x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    out = []
    for m in masks:
        t = torch.from_numpy(np.array(m, dtype=np.uint8))[None, None].float()
        t = torch.nn.functional.interpolate(t, size=(oh, ow), mode="nearest")
        out.append(Image.fromarray(t[0, 0].to(torch.uint8).numpy()))
    return Image.fromarray(x), out


def resize_setting(resize) -> str | tuple[int, int]:
    """The datasets' one training resize: a RESIZES name (a random draw, `method.resize`) or a
    fixed (W, H) (mmseg's Resize, aspect kept: `data.uda_pipeline`'s source/target_resize)."""
    return resize if isinstance(resize, str) else tuple(resize)


def training_resize(img, masks: list, resize: str | tuple[int, int]):
    """The `resize_setting`: RESIZES[resize]'s random draw, or `fixed_resize` into (W, H)."""
    if isinstance(resize, str):
        return random_resize(img, masks, resize)
    return fixed_resize(img, masks, resize)


def crop_box(h: int, w: int, crop_size: int, draw=random.randint) -> tuple[int, int, int, int]:
    """mmseg's RandomCrop.get_crop_bbox: offsets uniform in [0, side - crop] (0 when the side is
    shorter); (y1, y2, x1, x2), the ends possibly past a short side (cut by the slicing)."""
    top = draw(0, max(h - crop_size, 0))
    left = draw(0, max(w - crop_size, 0))
    return top, top + crop_size, left, left + crop_size


def cat_max_ratio_box(mask: np.ndarray, crop_size: int, ratio: float, draw=random.randint):
    """mmseg's RandomCrop with cat_max_ratio: a crop is kept when it holds at least two classes
    (ignore left out) and its largest class is under `ratio` of the labelled pixels (a crop at
    exactly `ratio`, or all ignore, is redrawn); after 10 redraws the 11th crop is kept
    unchecked, as the public loop does."""
    h, w = mask.shape
    box = crop_box(h, w, crop_size, draw)
    if ratio >= 1.0:
        return box
    for _ in range(CAT_MAX_TRIES):
        y1, y2, x1, x2 = box
        labels, counts = np.unique(mask[y1:y2, x1:x2], return_counts=True)
        counts = counts[labels != IGNORE]
        if len(counts) > 1 and counts.max() / counts.sum() < ratio:
            break
        box = crop_box(h, w, crop_size, draw)
    return box


def crop_then_pad(img, masks: list, box, crop_size: int, mask_fills: list[int], fill="zero"):
    """The crop `box` (cut at the image's border), then padded right/bottom to the crop size
    (mmseg's Pad after RandomCrop)."""
    y1, y2, x1, x2 = box
    w, h = img.size
    pil_box = (x1, y1, min(x2, w), min(y2, h))
    img, masks = img.crop(pil_box), [m.crop(pil_box) for m in masks]
    if img.size != (crop_size, crop_size):
        colour = PAD_FILLS[fill]
        img = _pad(img, crop_size, crop_size, colour if img.mode == "RGB" else colour[0])
        masks = [_pad(m, crop_size, crop_size, f) for m, f in zip(masks, mask_fills, strict=True)]
    return img, masks
