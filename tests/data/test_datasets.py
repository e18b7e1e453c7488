import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from semiseg.data import transforms as tf
from semiseg.data.datasets import LabeledDataset, UnlabeledDataset, ValDataset
from semiseg.data.splits import Sample, SplitError, load_split

CROP = 96


@pytest.fixture(scope="module")
def toy_split(toy_root):
    return load_split(toy_root, toy_root / "splits", 10)


def _constant(tmp_path, name, size, colour, mask_value=None):
    """A constant-colour image (bilinear resizing keeps it constant) and optional mask."""
    Image.new("RGB", size, colour).save(tmp_path / f"{name}.png")
    if mask_value is None:
        return Sample(f"{name}.png", None)
    Image.new("L", size, mask_value).save(tmp_path / f"{name}_m.png")
    return Sample(f"{name}.png", f"{name}_m.png")


def test_labeled_item(toy_root, toy_split, seeded):
    ds = LabeledDataset(toy_root, toy_split.labeled, CROP)
    assert len(ds) == 10
    item = ds[0]
    assert set(item) == {"image", "mask"}
    assert item["image"].shape == (3, CROP, CROP) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (CROP, CROP) and item["mask"].dtype == torch.long
    assert set(item["mask"].unique().tolist()) <= set(range(6)) | {255}
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, CROP, CROP) and batch["mask"].shape == (2, CROP, CROP)


def test_labeled_length_repeats_list(tmp_path):
    samples = [Sample(f"i{k}", f"m{k}") for k in range(3)]
    ds = LabeledDataset(tmp_path, samples, CROP, length=7)
    assert [s.image for s in ds.samples] == ["i0", "i1", "i2", "i0", "i1", "i2", "i0"]
    assert len(LabeledDataset(tmp_path, samples, CROP, length=2)) == 3
    with pytest.raises(SplitError):
        LabeledDataset(tmp_path, [Sample("i0", None)], CROP)


def test_labeled_padding_is_255(tmp_path, seeded):
    sample = _constant(tmp_path, "small", (20, 14), (255, 255, 255), mask_value=1)
    ds = LabeledDataset(tmp_path, [sample], CROP)
    for _ in range(5):
        item = ds[0]
        padded = item["image"][0] < 0  # padding is black; the image is white
        assert padded.any()
        assert (item["mask"][padded] == 255).all() and (item["mask"][~padded] == 1).all()


KEYS = {"weak", "strong1", "strong2", "box1", "box2", "ignore", "gt"}
MIX_KEYS = {"mix_weak", "mix_strong1", "mix_strong2", "mix_ignore"}


@pytest.mark.parametrize(
    "mix,num_strong,expected",
    [
        ("same", 2, KEYS | MIX_KEYS),
        ("shuffle", 2, KEYS | MIX_KEYS),
        (None, 2, KEYS),
        ("none", 2, KEYS),
        (
            "same",
            1,
            {"weak", "strong1", "box1", "ignore", "gt", "mix_weak", "mix_strong1", "mix_ignore"},
        ),
    ],
)
def test_unlabeled_keys_shapes_dtypes(toy_root, toy_split, seeded, mix, num_strong, expected):
    ds = UnlabeledDataset(toy_root, toy_split.unlabeled, CROP, num_strong=num_strong, mix=mix)
    assert len(ds) == 490
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert set(batch) == expected
    for key, value in batch.items():
        if "weak" in key or "strong" in key:
            assert value.shape == (2, 3, CROP, CROP) and value.dtype == torch.float32, key
        elif "box" in key:
            assert value.shape == (2, CROP, CROP) and value.dtype == torch.uint8, key
        else:
            assert value.shape == (2, CROP, CROP) and value.dtype == torch.long, key
    # the toy's unlabeled images have masks: gt holds classes and 255 only at padding
    assert ((batch["gt"] == 255) == (batch["ignore"] == 255)).all()


def test_unlabeled_rejects_bad_options(tmp_path):
    samples = [Sample("a", None)]
    with pytest.raises(ValueError, match="mix"):
        UnlabeledDataset(tmp_path, samples, CROP, mix="flip")
    with pytest.raises(ValueError, match="num_strong"):
        UnlabeledDataset(tmp_path, samples, CROP, num_strong=3)


def test_strong_views_are_independent(toy_root, toy_split, seeded):
    ds = UnlabeledDataset(toy_root, toy_split.unlabeled, CROP)
    items = [ds[i] for i in range(6)]
    differing = sum(not torch.equal(item["strong1"], item["strong2"]) for item in items)
    assert differing >= 5
    # the partner view is augmented on its own, and its strong views differ too
    assert sum(not torch.equal(item["mix_strong1"], item["mix_strong2"]) for item in items) >= 5


def test_ignore_is_255_exactly_at_padding(tmp_path, seeded):
    samples = [
        _constant(tmp_path, "with_gt", (40, 30), (255, 255, 255), mask_value=2),
        _constant(tmp_path, "no_gt", (40, 30), (255, 255, 255)),
    ]
    ds = UnlabeledDataset(tmp_path, samples, 64, mix="same")
    for index in (0, 1, 0, 1):
        item = ds[index]
        for prefix in ("", "mix_"):
            padded = item[f"{prefix}weak"][0] < 0  # padding is black; the image is white
            assert padded.any() and (~padded).any()
            assert torch.equal(item[f"{prefix}ignore"] == 255, padded)
            assert set(item[f"{prefix}ignore"].unique().tolist()) == {0, 255}
        if index == 0:
            gt = item["gt"]
            assert (gt[item["ignore"] == 255] == 255).all() and (gt[item["ignore"] == 0] == 2).all()
        else:
            assert (item["gt"] == 255).all()


def test_mix_partner_image(tmp_path, seeded):
    red = _constant(tmp_path, "red", (70, 70), (255, 0, 0))
    blue = _constant(tmp_path, "blue", (70, 70), (0, 0, 255))
    red_value = tf.normalize(Image.new("RGB", (1, 1), (255, 0, 0)))[:, 0, 0]

    def colour_of(view, ignore):
        return view[:, ignore == 0].mean(1)

    same = UnlabeledDataset(tmp_path, [red, blue], 64, mix="same")
    shuffle = UnlabeledDataset(tmp_path, [red, blue], 64, mix="shuffle")
    for _ in range(4):
        item = same[0]
        assert torch.allclose(colour_of(item["mix_weak"], item["mix_ignore"]), red_value, atol=1e-4)
        item = shuffle[0]  # the only other image is the blue one
        assert torch.allclose(colour_of(item["weak"], item["ignore"]), red_value, atol=1e-4)
        assert not torch.allclose(colour_of(item["mix_weak"], item["mix_ignore"]), red_value)


def test_val_item(toy_root, toy_split):
    ds = ValDataset(toy_root, toy_split.val)
    assert len(ds) == 100
    item = ds[0]
    w, h = Image.open(toy_root / toy_split.val[0].image).size
    assert item["image"].shape == (3, h, w) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (h, w) and item["mask"].dtype == torch.long
    assert item["name"] == "val_0000"
    expected = np.asarray(Image.open(toy_root / toy_split.val[0].mask))
    assert (item["mask"].numpy() == expected).all()
    batch = next(iter(DataLoader(ds, batch_size=1)))
    assert batch["name"] == ["val_0000"] and batch["image"].shape == (1, 3, h, w)


def test_val_size_mismatch_names_both_files(tmp_path):
    Image.new("RGB", (10, 8)).save(tmp_path / "img.png")
    Image.new("L", (10, 9)).save(tmp_path / "mask.png")
    ds = ValDataset(tmp_path, [Sample("img.png", "mask.png")])
    with pytest.raises(SplitError) as err:
        ds[0]
    assert "img.png" in str(err.value) and "mask.png" in str(err.value)
