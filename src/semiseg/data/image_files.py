"""Image and mask files opened as a viewer shows them, or refused in one line.

Cameras store a portrait photo as landscape pixels plus an EXIF Orientation tag; every viewer,
and so whoever drew its mask, sees it turned. Reading the raw pixels would train the photo
against a mask rotated or mirrored relative to it, without any error. So every image and mask is
turned by its tag (`ImageOps.exif_transpose`), and sizes are compared as displayed.

Pillow refuses files of more than twice `Image.MAX_IMAGE_PIXELS` (about 179 million pixels) with
a DecompressionBombError, which is not an OSError: it is caught here and named with its file.
"""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, Image, ImageOps

from semiseg.data.splits import SplitError

# EXIF orientations that turn by 90 degrees: the displayed width is the stored height.
_QUARTER_TURNS = (5, 6, 7, 8)


def too_large(path: Path, what: str, err: Exception) -> SplitError:
    return SplitError(
        f"cannot read {what} {path}: {err}; downscale the file or remove it from the lists"
    )


def open_displayed(path: Path, what: str = "image") -> Image.Image:
    """The decoded file, turned as its EXIF orientation says. `what`: image or mask (named in
    the error of an unreadable or oversized file)."""
    try:
        with Image.open(path) as img:
            img.load()
    except Image.DecompressionBombError as err:
        raise too_large(path, what, err) from None
    except OSError as err:
        raise SplitError(f"cannot read {what} {path}: {err}") from None
    return upright(img)


def upright(img: Image.Image) -> Image.Image:
    """`img` turned by its EXIF orientation (itself when it has none, or 1)."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, from the header only (no decoding)."""
    w, h = img.size
    if img.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS:
        return h, w
    return w, h
