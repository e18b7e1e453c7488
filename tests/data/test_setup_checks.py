"""Checks at setup: splits too small for a batch, overlapping lists, unreadable or unusual
images, unlabeled masks that do not exist, a read-only dataset folder."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli import (
    TINY,
    run_script,
    setup_fails,  # setup() as train.py runs it: one error line, exit 2
)
from layouts import custom_folders
from omegaconf import OmegaConf
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.data.datamodule import SemiSegDataModule
from semiseg.data.splits import SplitError, read_list, write_list

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def _toy_lists(toy_root):
    split = toy_root / "splits" / "10"
    return (
        read_list(split / "labeled.txt", require_mask=True),
        read_list(split / "unlabeled.txt", require_mask=False),
        read_list(toy_root / "splits" / "val.txt", require_mask=True),
    )


def _splits(folder, labeled, unlabeled, val):
    """A splits folder with one split `s` over the toy images."""
    write_list(folder / "s" / "labeled.txt", labeled)
    write_list(folder / "s" / "unlabeled.txt", unlabeled)
    write_list(folder / "val.txt", val)
    return folder


def _datamodule(root, splits_dir, split="s", batch_size=2, unlabeled=True, **dataset):
    return SemiSegDataModule(
        root=str(root),
        splits_dir=str(splits_dir),
        split=split,
        crop_size=32,
        batch_size=batch_size,
        num_workers=0,
        unlabeled=unlabeled,
        dataset={"root": str(root), "splits_dir": str(splits_dir), **dataset},
    )


# ------------------------------------------------------------------ a split smaller than a batch
def test_stream_shorter_than_a_batch_is_refused(toy_root, tmp_path, capsys, monkeypatch):
    labeled, unlabeled, val = _toy_lists(toy_root)
    tiny = _splits(tmp_path / "tiny", labeled[:1], unlabeled[:1], val[:2])
    message = setup_fails(_datamodule(toy_root, tiny), capsys)
    assert "the labeled stream has 1 images per epoch" in message
    assert "data.batch_size=2" in message and "no step would be trained" in message
    # the supervised baseline too (its labeled list is repeated to the unlabeled length)
    message = setup_fails(_datamodule(toy_root, tiny, unlabeled=False), capsys)
    assert "the labeled stream has 1 images per epoch" in message
    # a long labeled list does not hide a short unlabeled one
    short_u = _splits(tmp_path / "short_u", labeled[:4], unlabeled[:1], val[:2])
    message = setup_fails(_datamodule(toy_root, short_u), capsys)
    assert "the unlabeled stream has 1 images per epoch" in message
    # under DDP every process needs a batch of its own
    monkeypatch.setenv("WORLD_SIZE", "2")
    three = _splits(tmp_path / "three", labeled[:3], unlabeled[:3], val[:2])
    message = setup_fails(_datamodule(toy_root, three), capsys)
    assert "has 3 images per epoch, fewer than one batch (2 processes x data.batch_size=2)" in (
        message
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    dm = _datamodule(toy_root, three)
    dm.setup("fit")
    assert len(dm.train_dataloader()["labeled"]) == 1


@pytest.mark.slow
def test_train_py_refuses_a_split_smaller_than_a_batch(toy_root, tmp_path):
    labeled, unlabeled, val = _toy_lists(toy_root)
    tiny = _splits(tmp_path / "splits", labeled[:1], unlabeled[:1], val[:2])
    proc = run_script(
        "train.py",
        f"dataset.root={toy_root}",
        f"dataset.splits_dir={tiny}",
        "split=s",
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the labeled stream has 1")
    assert not (tmp_path / "run" / "results.json").exists()


# ------------------------------------------------------------------ overlapping lists
def test_validation_images_in_a_training_list_are_refused(toy_root, tmp_path, capsys):
    labeled, unlabeled, val = _toy_lists(toy_root)
    folder = _splits(tmp_path / "lv", labeled[:4] + val[:2], unlabeled[:4], val[:5])
    message = setup_fails(_datamodule(toy_root, folder), capsys)
    assert f"2 images of {folder / 's' / 'labeled.txt'} are also in {folder / 'val.txt'}" in (
        message
    )
    assert val[0].image in message and val[1].image in message
    unlabeled_val = [*unlabeled[:4], *(type(s)(s.image, None) for s in val[:3])]
    folder = _splits(tmp_path / "uv", labeled[:4], unlabeled_val, val[:5])
    message = setup_fails(_datamodule(toy_root, folder), capsys)
    assert "3 images of" in message and "unlabeled.txt" in message


def test_labeled_images_in_the_unlabeled_list_are_a_warning(toy_root, tmp_path, capsys):
    labeled, unlabeled, val = _toy_lists(toy_root)
    folder = _splits(tmp_path / "lu", labeled[:4], unlabeled[:4] + labeled[:2], val[:2])
    dm = _datamodule(toy_root, folder)
    dm.setup("fit")
    dm.setup("fit")  # Lightning calls it again: the warning is printed once
    out = capsys.readouterr().out
    assert out.count("warning: 2 images are in both labeled.txt and unlabeled.txt") == 1
    assert labeled[0].image in out


# ------------------------------------------------------------------ unreadable images
def test_truncated_image_is_found_at_setup(toy_root, tmp_path, capsys):
    labeled, unlabeled, val = _toy_lists(toy_root)
    root = tmp_path / "root"
    for sample in [*labeled[:2], *unlabeled[:2], *val[:2]]:
        for rel in filter(None, sample):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes((toy_root / rel).read_bytes())
    bad = root / unlabeled[1].image
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    splits = _splits(tmp_path / "splits", labeled[:2], unlabeled[:2], val[:2])
    message = setup_fails(_datamodule(root, splits), capsys)
    assert message.startswith(f"error: cannot read {bad}: ") and "truncated" in message
    _datamodule(root, splits, check_images=0).setup("fit")  # 0: no scan
    _datamodule(root, splits, check_images=3).setup("fit")  # longer lists are not scanned
    assert "more than dataset.check_images=3" in capsys.readouterr().out


def test_16_bit_and_rgba_images_are_read_as_their_values(tmp_path):
    gray = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    img = np.asarray(tf.load_image(tmp_path / "gray16.png"))
    assert img.shape == (2, 3, 3)
    assert img[..., 0].tolist() == [[0, 1, 128], [255, 4, 233]]  # value / 257, rounded
    assert (img[..., 0] == img[..., 2]).all()
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, 0, 3], rgba[1, 1, 3] = 0, 128  # transparent pixels keep their colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = np.asarray(tf.load_image(tmp_path / "rgba.png"))
    assert img.shape == (2, 2, 3) and (img == (200, 100, 50)).all()
    Image.fromarray(np.ones((2, 2), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(SplitError, match="float.tif holds floating-point values"):
        tf.load_image(tmp_path / "float.tif")


# ------------------------------------------------------------------ unlabeled masks
def test_missing_unlabeled_mask_does_not_stop_training(toy_root, tmp_path, capsys):
    labeled, unlabeled, val = _toy_lists(toy_root)
    listed = [type(s)(s.image, "masks/never_made.png") for s in unlabeled[:1]] + unlabeled[1:4]
    folder = _splits(tmp_path / "splits", labeled[:2], listed, val[:2])
    dm = _datamodule(toy_root, folder)
    dm.setup("fit")
    assert "1 masks named in unlabeled.txt do not exist (e.g. masks/never_made.png)" in (
        capsys.readouterr().out
    )
    assert (dm.unlabeled_set[0]["gt"] == 255).all()  # left out of the pseudo-label accuracy
    assert (dm.unlabeled_set[1]["gt"] != 255).any()


# ------------------------------------------------------------------ a read-only dataset folder
@pytest.fixture
def read_only(tmp_path):
    """`tmp_path/ro`: a read-only bind mount of `tmp_path/src` (chmod does not stop root)."""
    src, mounted = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mounted.mkdir()
    mount = subprocess.run(["mount", "--bind", str(src), str(mounted)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mount.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], check=True)
        yield src, mounted
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_split_generation_in_a_read_only_folder_is_one_line(read_only, tmp_path, capsys):
    src, root = read_only
    custom_folders(src / "plants")
    root = root / "plants"
    config = OmegaConf.create({"dataset": OmegaConf.load(CONF / "custom.yaml")})
    config.dataset.root = str(root)
    dataset = OmegaConf.to_container(config.dataset, resolve=True)
    dm = SemiSegDataModule(
        root=str(root),
        splits_dir=dataset["splits_dir"],
        split=2,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        dataset=dataset,
    )
    message = setup_fails(dm, capsys)
    assert f"cannot write the split files into {root / 'splits'} (Read-only file system)" in (
        message
    )
    assert "set dataset.splits_dir" in message
    writable = tmp_path / "splits"
    dataset["splits_dir"] = str(writable)
    dm = SemiSegDataModule(
        root=str(root),
        splits_dir=str(writable),
        split=2,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        dataset=dataset,
    )
    dm.setup("fit")
    assert (writable / "2" / "labeled.txt").is_file() and (writable / "val.txt").is_file()
