"""Masks as class indices: palettes, label maps and the value check."""

import numpy as np
import pytest
from PIL import Image

from semiseg.data import palettes
from semiseg.data.masks import MaskReader, label_map_table
from semiseg.data.splits import SplitError


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_voc_palette_by_hand():
    table = palettes.voc()
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[0].tolist() == [0, 0, 0]
    assert table[1].tolist() == [128, 0, 0]
    assert table[2].tolist() == [0, 128, 0]
    assert table[15].tolist() == [192, 128, 128]  # person
    assert table[255].tolist() == [224, 224, 192]  # the VOC boundary colour


def test_named_listed_and_generated_palettes():
    city = palettes.resolve("cityscapes")
    assert city[0].tolist() == [128, 64, 128] and city[18].tolist() == [119, 11, 32]
    assert city[255].tolist() == [0, 0, 0]
    generated = palettes.resolve(None)
    assert len({tuple(c) for c in generated[:151]}) == 151  # distinct for ADE20K's 150 + 1
    listed = palettes.resolve([[1, 2, 3], [4, 5, 6]], num_classes=2)
    assert listed[1].tolist() == [4, 5, 6]
    with pytest.raises(SplitError, match="3 classes"):
        palettes.resolve([[1, 2, 3], [4, 5, 6]], num_classes=3)
    with pytest.raises(SplitError, match="unknown dataset.palette 'vocc'"):
        palettes.resolve("vocc")
    with pytest.raises(SplitError, match="not an"):
        palettes.resolve([[1, 2]])


def test_palette_png_keeps_indices_and_colours(tmp_path):
    values = np.array([[0, 1, 20], [255, 15, 0]], dtype=np.uint8)
    palettes.save_index_png(tmp_path / "p.png", values, palettes.voc())
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), values)
        assert img.convert("RGB").getpixel((0, 1)) == (224, 224, 192)
    assert np.array_equal(MaskReader(21).values(tmp_path / "p.png"), values)
    rgb = palettes.colorize(values, palettes.voc())
    assert rgb.mode == "RGB" and rgb.getpixel((1, 0)) == (128, 0, 0)


def test_rgb_masks_decode_through_the_configured_palette(tmp_path):
    values = np.array([[0, 1, 2], [255, 15, 15]], dtype=np.uint8)
    palettes.colorize(values, palettes.voc()).save(tmp_path / "rgb.png")
    assert np.array_equal(MaskReader(21, palette="voc").values(tmp_path / "rgb.png"), values)
    # without a configured palette an RGB mask is refused, with the way out in the message
    with pytest.raises(SplitError, match="dataset.palette") as err:
        MaskReader(21).values(tmp_path / "rgb.png")
    assert "rgb.png" in _one_line(err)
    # a colour that is no class colour names the file and the colour
    img = Image.new("RGB", (2, 2), (1, 2, 3))
    img.save(tmp_path / "odd.png")
    with pytest.raises(SplitError) as err:
        MaskReader(21, palette="voc").values(tmp_path / "odd.png")
    assert "odd.png" in _one_line(err) and "(1, 2, 3)" in str(err.value)


def test_label_maps_by_hand():
    reduce = label_map_table("reduce_zero")
    assert [int(reduce[v]) for v in (0, 1, 2, 150, 255)] == [255, 0, 1, 149, 255]
    city = label_map_table("cityscapes_ids")
    assert [int(city[v]) for v in (0, 6, 7, 8, 26, 33, 34)] == [255, 255, 0, 1, 13, 18, 255]
    custom = label_map_table({1: 0, "2": 255})
    assert [int(custom[v]) for v in (0, 1, 2, 3)] == [0, 0, 255, 3]
    assert label_map_table(None) is None
    with pytest.raises(SplitError, match="unknown dataset.label_map 'reduce'"):
        label_map_table("reduce")
    with pytest.raises(SplitError, match="0..255"):
        label_map_table({300: 1})


def test_value_check_names_file_and_value(tmp_path):
    Image.fromarray(np.array([[0, 20, 255, 21, 40]], dtype=np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(SplitError) as err:
        MaskReader(21).values(tmp_path / "m.png")
    message = _one_line(err)
    assert str(tmp_path / "m.png") in message and "value 21" in message
    assert "other bad values: 40" in message and "0..20" in message and "255" in message
    # without a class count nothing is checked (unlabeled ground truth)
    assert MaskReader(None).values(tmp_path / "m.png").max() == 255


def test_reduce_zero_reads_ade20k_annotations(tmp_path):
    Image.fromarray(np.array([[0, 1, 150]], dtype=np.uint8)).save(tmp_path / "a.png")
    reader = MaskReader(150, label_map="reduce_zero")
    assert reader.values(tmp_path / "a.png").tolist() == [[255, 0, 149]]
    Image.fromarray(np.array([[0, 151]], dtype=np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(SplitError) as err:
        reader.values(tmp_path / "b.png")
    # the value in the file, and what the label map made of it
    assert "value 151 (150 after label_map reduce_zero)" in _one_line(err)
