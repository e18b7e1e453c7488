"""Bad input fails before training with one line that names what is wrong (exit code 2).

Each error is raised by the data module's setup, which train.py runs before building a model;
`exit_on_user_error` is the wrapper train.py and eval.py use. (tests/test_datasets_end_to_end.py
runs two of them through train.py itself.)
"""

import numpy as np
import pytest
from layouts import ade20k, custom_folders, pascal
from omegaconf import OmegaConf
from cli import setup_fails
from PIL import Image

from semiseg.data.datamodule import SemiSegDataModule, build_val_dataset
from semiseg.data.splits import SplitError
from semiseg.errors import exit_on_user_error

CONF = __import__("pathlib").Path(__file__).resolve().parents[2] / "conf" / "dataset"


def _config(name, root, **changes):
    """conf/dataset/<name>.yaml as train.py composes it, pointed at root."""
    full = OmegaConf.create({"dataset": OmegaConf.load(CONF / f"{name}.yaml"), "split": None})
    full.dataset.root = str(root)
    full.dataset.crop_size = 32
    for key, value in changes.items():
        full.dataset[key] = value
    return OmegaConf.to_container(full.dataset, resolve=True)


def _datamodule(name, root, split, **changes):
    dataset = _config(name, root, **changes)
    return SemiSegDataModule(
        root=dataset["root"],
        splits_dir=dataset["splits_dir"],
        split=split,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        dataset=dataset,
    )




def test_missing_root_names_path_and_layout(tmp_path, capsys):
    message = setup_fails(_datamodule("pascal", tmp_path / "VOC2012", "1/16"), capsys)
    assert f"dataset.root {tmp_path / 'VOC2012'} does not exist" in message
    assert "JPEGImages" in message and "SegmentationClass" in message


def test_missing_split_file_names_path_and_layout(tmp_path, capsys):
    root = pascal(tmp_path / "voc")
    (root / "splits" / "val.txt").unlink()
    message = setup_fails(_datamodule("pascal", root, "1/16"), capsys)
    assert f"{root / 'splits' / 'val.txt'} not found" in message and "labeled.txt" in message
    message = setup_fails(_datamodule("pascal", root, 92), capsys)
    assert "split 92 of pascal is not in" in message and "92/labeled.txt" in message


def test_missing_images_and_masks_name_the_first_few_and_count(tmp_path, capsys):
    root = pascal(tmp_path / "voc")
    for name in ("2007_000002", "2007_000003", "2007_000004", "2007_000005"):
        (root / "JPEGImages" / f"{name}.jpg").unlink()
    message = setup_fails(_datamodule("pascal", root, "1/16"), capsys)
    assert message.startswith("error: 4 files listed in the splits are missing")
    assert "JPEGImages/2007_000002.jpg, JPEGImages/2007_000003.jpg, JPEGImages/2007_000004.jpg" in (
        message
    )


def test_missing_prepared_masks_say_which_command_builds_them(tmp_path, capsys):
    from layouts import cityscapes

    root = cityscapes(tmp_path / "cityscapes")
    (root / "splits" / "val.txt").write_text((root / "splits" / "1_30" / "labeled.txt").read_text())
    message = setup_fails(_datamodule("cityscapes", root, "1/30"), capsys)
    assert "_gtFine_labelTrainIds.png" in message
    assert f"run: python -m semiseg.data.prepare.cityscapes {root}" in message


def test_mask_value_outside_the_classes_names_file_and_value(tmp_path, capsys):
    root = pascal(tmp_path / "voc")
    bad = root / "SegmentationClassAug" / "2007_000001.png"  # a labeled SBD mask
    values = np.asarray(Image.open(bad)).copy()
    values[0, 0] = 42
    Image.fromarray(values).save(bad)
    message = setup_fails(_datamodule("pascal", root, "1/16"), capsys)
    assert f"mask {bad} holds value 42" in message and "(0..20) nor 255" in message


def test_bad_mask_value_is_also_caught_when_an_item_loads(tmp_path):
    root = pascal(tmp_path / "voc")
    dm = _datamodule("pascal", root, "1/16", check_masks=0)
    dm.setup("fit")
    bad = root / "SegmentationClassAug" / "2007_000001.png"
    values = np.asarray(Image.open(bad)).copy()
    values[0, 0] = 42
    Image.fromarray(values).save(bad)
    index = [s.mask for s in dm.labeled_set.samples].index("SegmentationClassAug/2007_000001.png")
    with pytest.raises(SplitError, match="holds value 42"):
        dm.labeled_set[index]


def test_image_and_mask_of_different_sizes_name_both(tmp_path, capsys):
    root = pascal(tmp_path / "voc")
    mask = root / "SegmentationClass" / "2007_000006.png"  # a val mask
    Image.open(mask).crop((0, 0, 20, 32)).save(mask)
    message = setup_fails(_datamodule("pascal", root, "1/16"), capsys)
    assert f"image {root / 'JPEGImages' / '2007_000006.jpg'} is 40x32" in message
    assert f"its mask {mask} is 20x32" in message


def test_unknown_split_lists_the_valid_ones(tmp_path, capsys):
    root = pascal(tmp_path / "voc")
    message = setup_fails(_datamodule("pascal", root, 7), capsys)
    assert "unknown split '7' for pascal: valid splits are 92, 183, 366, 732, 1464, 662" in message
    assert "1/16=662" in message


def test_ade20k_annotations_are_reduced_and_checked(tmp_path):
    root = ade20k(tmp_path / "ADEChallengeData2016")
    (root / "splits" / "val.txt").write_text(
        "images/validation/ADE_val_00000005.jpg annotations/validation/ADE_val_00000005.png\n"
    )
    dm = _datamodule("ade20k", root, "1/64")
    dm.setup("fit")
    mask = dm.val_set[0]["mask"]
    assert set(mask.unique().tolist()) == {255, 0, 149, 4}  # file values 0, 1, 150, 5
    assert len(dm.class_names) == 150


def test_eval_val_set_uses_the_same_checks(tmp_path):
    root = custom_folders(tmp_path / "plants")
    dataset = _config("custom", root)
    with pytest.raises(SplitError, match="val.txt not found"):
        build_val_dataset(dataset, num_classes=3)
    dm = _datamodule("custom", root, "1/8")
    dm.setup("fit")
    val = build_val_dataset(dataset, num_classes=3)
    assert len(val) == 1 and val[0]["mask"].max() <= 255
    with pytest.raises(SplitError, match="neither a class"):
        build_val_dataset(dataset, num_classes=2)[0]


def test_error_in_a_dataloader_worker_is_still_one_line(tmp_path, capsys):
    root = pascal(tmp_path / "voc")
    dm = _datamodule("pascal", root, "1/16", check_masks=0)
    dm.num_workers = 1
    dm.setup("fit")
    for name in ("2007_000000", "2007_000001"):
        Image.new("L", (40, 32), 99).save(root / "SegmentationClass" / f"{name}.png")
        Image.new("L", (40, 32), 99).save(root / "SegmentationClassAug" / f"{name}.png")

    def first_batch():
        next(iter(dm.train_dataloader()["labeled"]))

    with pytest.raises(SystemExit):
        exit_on_user_error(first_batch)()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: mask ") and "value 99" in lines[0]


def test_a_required_key_left_unset_is_one_line(capsys):
    # dataset=custom without dataset.root=DIR
    cfg = OmegaConf.create({"dataset": {"root": "???", "splits_dir": "${dataset.root}/splits"}})
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: cfg.dataset.splits_dir)()
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip() == "error: dataset.root is required: give dataset.root=..."
    )
