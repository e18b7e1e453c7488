"""Images and masks are read as displayed (their EXIF orientation applied), and a file Pillow
refuses as a decompression bomb fails in one line naming it."""

import numpy as np
import pytest
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.data.masks import read_values
from semiseg.data.spec import check_same_size
from semiseg.data.splits import Sample, SplitError

ORIENTATION = 0x0112
ROTATE_CW = 6  # EXIF: "the 0th row is the visual right-hand side": turn 90 degrees clockwise


def _save(array, path, orientation=None):
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(array).save(path, exif=exif)  # PNG: lossless, exact comparisons
    return path


def _stored(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 200, shape, dtype=np.uint8)


def test_an_image_and_its_mask_are_turned_as_exif_says(tmp_path):
    stored_image = _stored((3, 5, 3))  # 5 wide, 3 high as stored; 3 wide, 5 high as displayed
    stored_mask = _stored((3, 5), seed=1) % 4
    image = _save(stored_image, tmp_path / "photo.png", ROTATE_CW)
    mask = _save(stored_mask, tmp_path / "mask.png", ROTATE_CW)
    displayed = np.rot90(stored_image, k=-1)  # clockwise, written out independently of Pillow
    assert np.array_equal(np.asarray(tf.load_image(image)), displayed)
    assert np.array_equal(np.asarray(tf.load_mask(mask)), np.rot90(stored_mask, k=-1))
    assert np.array_equal(read_values(mask), np.rot90(stored_mask, k=-1))


def test_an_image_without_orientation_is_read_as_stored(tmp_path):
    stored = _stored((3, 5, 3))
    for orientation in (None, 1):
        path = _save(stored, tmp_path / f"plain{orientation}.png", orientation)
        assert np.array_equal(np.asarray(tf.load_image(path)), stored)


def test_sizes_compare_as_displayed(tmp_path):
    _save(_stored((3, 5, 3)), tmp_path / "photo.png", ROTATE_CW)
    sample = Sample(image="photo.png", mask="mask.png")
    check_same_size(tmp_path, sample, (3, 5))  # a mask drawn on the displayed photo
    with pytest.raises(SplitError, match="is 3x5 but its mask"):
        check_same_size(tmp_path, sample, (5, 3))


@pytest.mark.parametrize("reader", ["image", "mask", "mask values", "size"])
def test_a_decompression_bomb_fails_in_one_line_naming_the_file(reader, tmp_path, monkeypatch):
    path = _save(_stored((8, 8)), tmp_path / "huge.png")
    # Pillow refuses files over twice MAX_IMAGE_PIXELS: 64 pixels against a limit of 2 x 16
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)
    with pytest.raises(SplitError) as caught:
        if reader == "image":
            tf.load_image(path)
        elif reader == "mask":
            tf.load_mask(path)
        elif reader == "mask values":
            read_values(path)
        else:
            check_same_size(tmp_path, Sample(image="huge.png", mask=None), (8, 8))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "exceeds limit" in message and "downscale the file" in message
