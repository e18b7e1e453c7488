"""Change-detection pairs (data/change.py): one geometry for A, B and the mask, independent
photometric strong views, the public layout's split files, and one-line errors for bad input."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.data import cd_toy, change
from semiseg.data.datamodule import SemiSegDataModule
from semiseg.data.splits import Sample, SplitError

sys.path.insert(0, str(Path(__file__).parents[1]))
import layouts  # noqa: E402

WHU = {
    "name": "whu_cd",
    "format": "cd",
    "augment": "change",
    "task": "change_detection",
    "classes": ["unchanged", "changed"],
    "val_list": "test.txt",
}


@pytest.fixture(scope="module")
def whu(tmp_path_factory):
    return layouts.change_detection(tmp_path_factory.mktemp("cd") / "WHU-CD-256", style="whu")


def identical_pair(root: Path, name="same.png", size=40):
    """A pair whose B is A itself, with a change mask of A's bright quarter."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    label = np.zeros((size, size), np.uint8)
    label[: size // 2, : size // 2] = 255
    for folder, array in (("A", a), ("B", a), ("label", label)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / folder / name)
    return [Sample(name, None)]


def test_labeled_views_share_one_geometry(tmp_path):
    samples = identical_pair(tmp_path)
    data = change.ChangeLabeledDataset(tmp_path, samples, crop_size=32, length=8)
    assert len(data) == 8
    for i in range(8):
        item = data[i]
        assert item["image"].shape == (6, 32, 32) and item["mask"].shape == (32, 32)
        assert torch.equal(item["image"][:3], item["image"][3:])  # same resize, crop, flip
        assert set(item["mask"].unique().tolist()) <= {0, 1, 255}


def test_unlabeled_strong_views_jitter_a_and_b_independently(tmp_path):
    samples = identical_pair(tmp_path)
    data = change.ChangeUnlabeledDataset(tmp_path, samples, crop_size=32, num_strong=2)
    differ = 0
    for _ in range(6):
        item = data[0]
        assert torch.equal(item["weak"][:3], item["weak"][3:])
        assert torch.equal(item["mix_weak"][:3], item["mix_weak"][3:])
        for k in (1, 2):
            assert item[f"strong{k}"].shape == (6, 32, 32) and item[f"box{k}"].shape == (32, 32)
        differ += not torch.equal(item["strong1"][:3], item["strong1"][3:])
        assert set(item["gt"].unique().tolist()) <= {0, 1, 255}
    assert differ > 0


def test_change_mask_reads_0_255_and_0_1_and_refuses_other_values(tmp_path):
    identical_pair(tmp_path)
    mask = change.load_change_mask(tmp_path, "same.png", (40, 40))
    assert set(np.unique(np.asarray(mask))) == {0, 1}
    Image.fromarray(np.asarray(mask)).save(tmp_path / "label" / "same.png")  # 0/1
    assert np.array_equal(np.asarray(change.load_change_mask(tmp_path, "same.png", (40, 40))), mask)
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "label" / "same.png")
    with pytest.raises(SplitError, match=r"label/same.png holds the values 128.*binary"):
        change.load_change_mask(tmp_path, "same.png", (40, 40))


def test_pair_of_two_sizes_names_both_files(tmp_path):
    identical_pair(tmp_path)
    Image.new("RGB", (20, 40)).save(tmp_path / "B" / "same.png")
    with pytest.raises(SplitError, match=r"A/same.png is 40x40 but .*B/same.png is 20x40"):
        change.load_pair(tmp_path, "same.png")


def test_missing_b_image_names_the_file_and_the_layout(tmp_path):
    identical_pair(tmp_path, "whole.png")
    identical_pair(tmp_path, "half.png")
    (tmp_path / "B" / "half.png").unlink()
    samples = [Sample("whole.png", None), Sample("half.png", None)]
    with pytest.raises(
        SplitError, match=r"1 of the 2 pairs .* lack their B/ .*B/half.png.*A/ and B/"
    ):
        change.check_pairs(tmp_path, samples, "labeled", labels=True)


def test_two_fields_on_a_line_are_refused(tmp_path):
    (tmp_path / "labeled.txt").write_text("a.png label/a.png\n")
    with pytest.raises(SplitError, match="one file name per line"):
        change.read_names(tmp_path / "labeled.txt")


def test_datamodule_reads_the_public_split_layout(whu):
    dm = SemiSegDataModule(
        root=str(whu),
        splits_dir=str(whu / "splits"),
        split="5%",
        crop_size=32,
        batch_size=2,
        num_workers=0,
        dataset=WHU,
    )
    dm.setup("fit")
    assert len(dm.files.labeled) == 2 and len(dm.files.unlabeled) == 4
    assert len(dm.labeled_set) == 4  # repeated to the unlabeled length, as the public code
    assert [s.image for s in dm.files.val] == ["whucd_00500.png", "whucd_00501.png"]  # test.txt
    batch = next(iter(dm.train_dataloader()["unlabeled"]))
    assert batch["weak"].shape == (2, 6, 32, 32) and "mix_strong2" in batch
    val = dm.val_set[0]
    assert val["image"].shape == (6, 32, 32) and val["name"] == "whucd_00500"


def test_format_and_augment_must_match(whu):
    with pytest.raises(ValueError, match="format cd"):
        SemiSegDataModule(
            root=str(whu),
            splits_dir=str(whu / "splits"),
            split="5%",
            crop_size=32,
            dataset={**WHU, "augment": "natural"},
        )


def test_toy_is_generated_once_in_the_public_layout(tmp_path):
    root = cd_toy.ensure(tmp_path / "cd_toy")
    assert cd_toy.is_current(root)
    labeled = (root / "splits" / "20%" / "labeled.txt").read_text().split()
    assert len(labeled) == 8 and set(labeled) <= set(
        (root / "splits/train.txt").read_text().split()
    )
    test = (root / "splits" / "test.txt").read_text().split()
    change.check_pairs(root, [Sample(n, None) for n in test], "test", labels=True)
    masks = [np.asarray(Image.open(root / "label" / n)) for n in test]
    assert any(m.any() for m in masks) and all(set(np.unique(m)) <= {0, 255} for m in masks)
    assert cd_toy.ensure(root) == root  # current: not written again
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    with pytest.raises(SplitError, match="refusing"):
        cd_toy.ensure(tmp_path / "other")


@pytest.mark.parametrize("tool", ["predict.py", "export.py"])
def test_single_image_tools_refuse_pair_checkpoints(tool):
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{tool} takes single RGB images.*eval.py"):
        change.refuse_pairs(WHU, tool)
    change.refuse_pairs({"name": "toy", "format": "images"}, tool)  # not a pair dataset
