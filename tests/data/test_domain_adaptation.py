"""Domain adaptation data: `source=<dataset>` gives the labeled images, `dataset` the unlabeled
and validation ones; the GTA5 and SYNTHIA layouts read as Cityscapes train ids.

Configs are composed as train.py composes them (conf/train.yaml with `dataset=` and `source=`),
so the source config group and the dataset configs themselves are under test.
"""

from pathlib import Path

import layouts
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from cli import setup_fails
from PIL import Image

import semiseg.data  # noqa: F401  (registers the config resolvers)
from semiseg.data.masks import MaskReader
from semiseg.data.prepare import cityscapes as prepare_cityscapes
from semiseg.data.spec import DatasetSpec
from semiseg.errors import exit_on_user_error

CONF = Path(__file__).resolve().parents[2] / "conf"

# Expected train ids, written out by hand (Cityscapes labelIds -> trainIds: the official table).
GTA5_EXPECTED = {
    0: 255, 1: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 15: 255, 17: 5, 21: 8, 24: 11,
    26: 13, 29: 255, 30: 255, 31: 16, 33: 18, 34: 255,
}  # fmt: skip
# SYNTHIA ids -> Cityscapes train ids (FST / DAFormer tools/convert_datasets/synthia.py).
SYNTHIA_EXPECTED = {
    0: 255, 1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17,
    13: 255, 14: 255, 15: 6, 17: 12, 19: 15, 21: 3, 22: 255,
}  # fmt: skip


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def datamodule(cfg, unlabeled=True):
    return instantiate(
        cfg.data,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        unlabeled=unlabeled,
        num_strong=1,
        mix="none",
    )


def dataset_reader(name: str, root: Path):
    cfg = compose_train(f"dataset={name}", f"dataset.root={root}")
    spec = DatasetSpec.from_config(cfg.dataset)
    return spec, spec.mask_reader(len(cfg.dataset.classes))


def expected(raw: np.ndarray, table: dict) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.uint8)
    for value, train_id in table.items():
        out[raw == value] = train_id
    return out


def test_gta5_label_ids_read_as_cityscapes_train_ids(tmp_path):
    root = layouts.gta5(tmp_path / "gta5")
    _, reader = dataset_reader("gta5", root)
    path = root / "labels" / "00001.png"
    raw = np.asarray(Image.open(path))
    assert set(np.unique(raw)) == set(layouts.GTA5_IDS)  # every hand-picked id is in the file
    assert np.array_equal(np.asarray(reader(path)), expected(raw, GTA5_EXPECTED))


def test_synthia_first_channel_of_16_bit_labels_reads_as_cityscapes_train_ids(tmp_path):
    root = layouts.synthia(tmp_path / "synthia")
    _, reader = dataset_reader("synthia", root)
    path = root / "GT" / "LABELS" / "0000000.png"
    raw = layouts.synthia_label((80, 48), 500)[..., 0]
    # Pillow alone keeps the high byte of each 16-bit value: every class id < 256 reads as 0
    assert not np.asarray(Image.open(path))[..., 0].any()
    mapped = np.asarray(reader(path))
    assert np.array_equal(mapped, expected(raw, SYNTHIA_EXPECTED))
    # the three classes SYNTHIA lacks never occur; the instance ids in channel 1 are ignored
    assert not {9, 14, 16} & set(np.unique(mapped).tolist())


def test_16_bit_colour_mask_without_mask_channel_is_a_clear_error(tmp_path):
    path = tmp_path / "label.png"
    layouts.save_png16(path, layouts.synthia_label((8, 6), 0))
    with pytest.raises(ValueError, match=r"16-bit colour PNG; set dataset.mask_channel"):
        MaskReader(19, "synthia_ids")(path)


def test_synthia_reports_the_16_and_13_class_means():
    from semiseg.evaluation.metrics import subset_mious
    from semiseg.run.build import miou_subsets

    cfg = compose_train("dataset=cityscapes", "source=synthia")
    subsets = miou_subsets(cfg.source, cfg.dataset, list(cfg.dataset.classes))
    assert len(subsets["miou16"]) == 16 and len(subsets["miou13"]) == 13
    assert {"terrain", "truck", "train"}.isdisjoint(subsets["miou16"])
    assert set(subsets["miou16"]) - set(subsets["miou13"]) == {"wall", "fence", "pole"}
    per_class = {name: 50.0 for name in cfg.dataset.classes}
    per_class.update(terrain=0.0, truck=0.0, train=0.0, wall=None)
    means = subset_mious(per_class, subsets)
    assert means == {"miou16": round(50.0 * 15 / 16, 2), "miou13": 50.0}
    # no source and a dataset without subsets: nothing extra
    assert miou_subsets(None, compose_train("dataset=cityscapes").dataset, []) == {}


def cityscapes_target(tmp_path) -> Path:
    root = layouts.cityscapes(tmp_path / "cityscapes")
    exit_on_user_error(prepare_cityscapes.main)([str(root)])
    return root


def source_to_cityscapes(tmp_path, source: str):
    """(config, source root, target root) of `dataset=cityscapes source=<source>` on fixtures."""
    source_root = getattr(layouts, source)(tmp_path / source)
    target_root = cityscapes_target(tmp_path)
    cfg = compose_train(
        "dataset=cityscapes",
        f"source={source}",
        f"dataset.root={target_root}",
        f"source.root={source_root}",
        "split=1/30",
    )
    return cfg, source_root, target_root


def test_gta5_source_cityscapes_target_streams(tmp_path, capsys):
    cfg, source_root, target_root = source_to_cityscapes(tmp_path, "gta5")
    dm = datamodule(cfg)
    dm.setup("fit")
    out = capsys.readouterr().out
    assert (
        "domain adaptation: 4 labeled images of gta5" in out
        and "4 unlabeled images of cityscapes (split 1_30, labels unused)" in out
        and "validation on 2 images of cityscapes" in out
    )
    assert "warning" not in out
    # labeled: every GTA5 pair, read from its own root with its own label map
    assert dm.labeled_set.root == source_root
    assert [s.image for s in dm.source_files.labeled] == [
        f"images/{i:05d}.png" for i in range(1, 5)
    ]
    mask = dm.labeled_set.read_mask(source_root / "labels" / "00002.png")
    raw = np.asarray(Image.open(source_root / "labels" / "00002.png"))
    assert np.array_equal(np.asarray(mask), expected(raw, GTA5_EXPECTED))
    # unlabeled: the split's labeled and unlabeled Cityscapes images; val: Cityscapes val
    assert dm.unlabeled_set.root == target_root
    assert sorted(s.image for s in dm.unlabeled_set.samples) == sorted(
        p.relative_to(target_root).as_posix()
        for p in (target_root / "leftImg8bit" / "train").rglob("*.png")
    )
    assert all("/val/" in s.image for s in dm.val_set.samples) and len(dm.val_set) == 2
    batch = next(iter(dm.train_dataloader()["labeled"]))
    assert set(batch["mask"].unique().tolist()) <= set(GTA5_EXPECTED.values())


def test_synthia_source_needs_no_conversion(tmp_path, capsys):
    cfg, source_root, target_root = source_to_cityscapes(tmp_path, "synthia")
    dm = datamodule(cfg, unlabeled=False)  # a source-only baseline: no unlabeled stream
    dm.setup("fit")
    assert dm.unlabeled_set is None and len(dm.source_files.labeled) == 4
    item = dm.labeled_set[0]
    assert set(item["mask"].unique().tolist()) <= set(SYNTHIA_EXPECTED.values())


def test_same_relative_paths_in_two_datasets_are_not_an_overlap(tmp_path, toy_root, capsys):
    # toy and toy_shifted name their files alike (images/train_0000.png): different files
    cfg = compose_train(
        "dataset=toy",
        "source=toy_shifted",
        f"dataset.root={toy_root}",
        f"source.root={tmp_path / 'toy_shifted'}",
    )
    dm = datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    out = capsys.readouterr().out
    assert "warning" not in out and "500 labeled images of toy_shifted" in out
    assert {s.image for s in dm.source_files.labeled} == {s.image for s in dm.files.unlabeled}


def test_source_images_that_are_target_val_images_fail(tmp_path, toy_root, capsys):
    # the toy itself as its own source, read as a plain folder pair (no splits): its images/
    # folder holds the val images too
    cfg = compose_train(
        "dataset=toy",
        "source=toy",
        f"dataset.root={toy_root}",
        f"source.root={toy_root}",
        f"source.splits_dir={tmp_path / 'none'}",
    )
    message = setup_fails(datamodule(cfg), capsys)
    assert "labeled images of source=toy are validation images of dataset=toy" in message




def test_missing_source_root_names_path_and_key(tmp_path, toy_root, capsys):
    missing = tmp_path / "gta"
    cfg = compose_train("dataset=toy", "source=gta5", f"dataset.root={toy_root}")
    cfg.source.root = str(missing)
    message = setup_fails(datamodule(cfg), capsys)
    assert message.startswith(f"error: source.root {missing} does not exist")
    assert "(source.root=DIR)" in message and "<root>/labels/*.png" in message


def test_source_root_without_its_folder_names_folder_and_key(tmp_path, capsys):
    root = layouts.synthia(tmp_path / "synthia")
    for path in (root / "GT" / "LABELS").iterdir():
        path.unlink()
    (root / "GT" / "LABELS").rmdir()
    cfg = compose_train(
        "dataset=cityscapes",
        "source=synthia",
        f"dataset.root={cityscapes_target(tmp_path)}",
        f"source.root={root}",
        "split=1/30",
    )
    capsys.readouterr()
    message = setup_fails(datamodule(cfg), capsys)
    assert f"source.root {root} has no GT/LABELS/ folder" in message
    assert "set source.root=DIR" in message


def test_source_with_other_classes_fails(tmp_path, toy_root, capsys):
    root = layouts.gta5(tmp_path / "gta5")
    cfg = compose_train("dataset=toy", "source=gta5", f"dataset.root={toy_root}")
    cfg.source.root = str(root)
    message = setup_fails(datamodule(cfg), capsys)
    assert "source=gta5 labels other classes than dataset=toy" in message
    assert "class 0 is 'road' there, 'background' here" in message


def test_source_images_without_a_label_are_left_out_with_a_note(tmp_path, capsys):
    root = layouts.gta5(tmp_path / "gta5")
    (root / "labels" / "00003.png").unlink()
    spec = DatasetSpec.from_config(
        compose_train("source=gta5", f"source.root={root}").source, key="source"
    )
    files = spec.load_source()
    assert [s.image for s in files.labeled] == ["images/00001.png", "images/00002.png", "images/00004.png"]
    assert "note: 1 images of" in capsys.readouterr().out
