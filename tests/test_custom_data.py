"""Binary and few-class data as users bring it, through the custom dataset (the quickstart's
dataset=custom on a plain images/ + masks/ folder): each kind is read right or refused in one
line before training (tests/test_custom_quickstart.py runs the quickstart itself)."""

import numpy as np
import pytest
from cli import REPO, setup_fails
from omegaconf import OmegaConf
from PIL import Image

from semiseg.data.datamodule import SemiSegDataModule

SIZE = (40, 30)  # width, height


def blob(size=SIZE, seed=0) -> np.ndarray:
    """A 0/1 mask: one rectangle of object on background."""
    rng = np.random.default_rng(seed)
    w, h = size
    mask = np.zeros((h, w), dtype=np.uint8)
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y : y + h // 3, x : x + w // 3] = 1
    return mask


def folder(root, write_mask, n_masked=10, n_unmasked=0, sizes=None, classes=("bg", "cell")):
    """images/ (grayscale) and masks/ written by `write_mask(path, 0/1 array)`; classes.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for i in range(n_masked + n_unmasked):
        size = sizes[i % len(sizes)] if sizes else SIZE
        mask = blob(size, i)
        image = (60 + 120 * mask + np.random.default_rng(i).integers(0, 40, mask.shape)).astype(
            np.uint8
        )
        Image.fromarray(image, mode="L").save(root / "images" / f"c{i:02d}.png")
        if i < n_masked:
            write_mask(root / "masks" / f"c{i:02d}.png", mask)
    return root


def datamodule(root, split=4, **changes) -> SemiSegDataModule:
    """conf/dataset/custom.yaml as train.py composes it, pointed at root."""
    full = OmegaConf.create(
        {"dataset": OmegaConf.load(REPO / "conf" / "dataset" / "custom.yaml"), "split": None}
    )
    full.dataset.root = str(root)
    for key, value in changes.items():
        full.dataset[key] = value
    dataset = OmegaConf.to_container(full.dataset, resolve=True)
    return SemiSegDataModule(
        root=dataset["root"],
        splits_dir=dataset["splits_dir"],
        split=split,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        dataset=dataset,
    )


def val_values(dm) -> set[int]:
    return {int(v) for i in range(len(dm.val_set)) for v in dm.val_set[i]["mask"].unique()}


def save_0_255(path, mask):
    Image.fromarray(mask * 255).save(path)


def save_0_1(path, mask):
    Image.fromarray(mask).save(path)


RED = (200, 30, 30)


def save_rgb(path, mask):
    rgb = np.zeros((*mask.shape, 3), dtype=np.uint8)
    rgb[mask == 1] = RED
    Image.fromarray(rgb, mode="RGB").save(path)


def test_masks_of_0_and_255_with_the_label_map_read_as_classes(tmp_path, capsys):
    dm = datamodule(folder(tmp_path / "d", save_0_255), label_map={255: 1})
    dm.setup("fit")
    assert val_values(dm) == {0, 1}
    assert "warning" not in capsys.readouterr().out


def test_masks_of_0_and_255_without_the_label_map_are_warned_in_one_line(tmp_path, capsys):
    dm = datamodule(folder(tmp_path / "d", save_0_255))
    dm.setup("fit")
    warnings = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning")]
    assert len(warnings) == 1 and "dataset.label_map={255:1}" in warnings[0]


def test_masks_of_0_and_1_read_as_they_are(tmp_path, capsys):
    dm = datamodule(folder(tmp_path / "d", save_0_1))
    dm.setup("fit")
    assert val_values(dm) == {0, 1}
    assert "warning" not in capsys.readouterr().out


def test_rgb_colour_masks_decode_through_the_palette(tmp_path):
    dm = datamodule(folder(tmp_path / "d", save_rgb), palette=[[0, 0, 0], list(RED)])
    dm.setup("fit")
    assert val_values(dm) == {0, 1}


def test_rgb_colour_masks_without_a_palette_are_refused_in_one_line(tmp_path, capsys):
    message = setup_fails(datamodule(folder(tmp_path / "d", save_rgb)), capsys)
    assert "has mode RGB" in message and "dataset.palette" in message


def test_a_colour_outside_the_palette_is_refused_in_one_line(tmp_path, capsys):
    dm = datamodule(folder(tmp_path / "d", save_rgb), palette=[[0, 0, 0], [0, 255, 0]])
    message = setup_fails(dm, capsys)
    assert "has colour (200, 30, 30), which is not in dataset.palette" in message


def test_a_value_beyond_the_classes_is_refused_in_one_line(tmp_path, capsys):
    def save_0_2(path, mask):
        Image.fromarray(mask * 2).save(path)

    message = setup_fails(datamodule(folder(tmp_path / "d", save_0_2)), capsys)
    assert "holds value 2" in message and "(0..1) nor 255" in message
    assert "dataset.label_map" in message


def test_images_without_a_mask_are_unlabeled(tmp_path):
    dm = datamodule(folder(tmp_path / "d", save_0_1, n_masked=10, n_unmasked=5))
    dm.setup("fit")
    maskless = {f"images/c{i:02d}.png" for i in range(10, 15)}
    unlabeled = {s.image for s in dm.unlabeled_set.samples}
    assert maskless <= unlabeled
    for samples in (dm.labeled_set.samples, dm.val_set.samples):
        assert not maskless & {s.image for s in samples}
    # 10 masked: 1 held out for val, 4 labeled, 5 unlabeled with a mask, 5 without
    assert len(dm.val_set) == 1 and len(dm.unlabeled_set.samples) == 10


def test_images_of_different_sizes_train_in_crops_and_validate_whole(tmp_path):
    sizes = [(40, 30), (64, 48), (30, 50)]
    dm = datamodule(folder(tmp_path / "d", save_0_1, n_masked=12, sizes=sizes), val_fraction=0.25)
    dm.setup("fit")
    for i in range(len(dm.labeled_set.samples)):
        item = dm.labeled_set[i]
        assert tuple(item["image"].shape[-2:]) == (32, 32) == tuple(item["mask"].shape)
    shapes = {tuple(dm.val_set[i]["mask"].shape) for i in range(len(dm.val_set))}
    assert len(shapes) > 1  # whole images, each its own size


def test_a_mask_of_another_size_than_its_image_is_refused_in_one_line(tmp_path, capsys):
    root = folder(tmp_path / "d", save_0_1)
    Image.fromarray(blob((20, 30))).save(root / "masks" / "c03.png")
    message = setup_fails(datamodule(root, check_masks=-1), capsys)
    assert f"image {root / 'images' / 'c03.png'} is 40x30 but its mask" in message
    assert "is 20x30; they must have the same size" in message


@pytest.mark.parametrize("value", [0, 1])
def test_an_all_background_or_all_object_mask_is_read(tmp_path, value):
    root = folder(tmp_path / "d", save_0_1)
    Image.fromarray(np.full((30, 40), value, dtype=np.uint8)).save(root / "masks" / "c00.png")
    dm = datamodule(root, check_masks=-1)
    dm.setup("fit")
