"""The prepare commands on tiny fixtures in the datasets' raw formats."""

import json

import numpy as np
import pytest
from layouts import ade20k, cityscapes, coco
from PIL import Image

from semiseg.data.prepare import ade20k as prepare_ade20k
from semiseg.data.prepare import cityscapes as prepare_cityscapes
from semiseg.data.splits import read_list


def _values(path):
    with Image.open(path) as img:
        return np.asarray(img)


def test_cityscapes_label_ids_to_train_ids(tmp_path, capsys):
    root = cityscapes(tmp_path / "cityscapes")
    prepare_cityscapes.main([str(root)])
    out = capsys.readouterr().out.strip()
    assert out.startswith("cityscapes: wrote 6 *_gtFine_labelTrainIds.png files, kept 0")
    assert "val.txt (2 val images)" in out
    stem = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019"
    raw = _values(f"{stem}_gtFine_labelIds.png")
    train = _values(f"{stem}_gtFine_labelTrainIds.png")
    # 0, 1 (void) -> 255; 7 road -> 0; 8 sidewalk -> 1; 11 building -> 2; 21 vegetation -> 8;
    # 23 sky -> 10; 24 person -> 11; 26 car -> 13; 33 bicycle -> 18
    expected = {0: 255, 1: 255, 7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18}
    assert set(np.unique(raw).tolist()) == set(expected)
    for raw_id, train_id in expected.items():
        assert (train[raw == raw_id] == train_id).all()
    val = read_list(root / "splits" / "val.txt", require_mask=True)
    assert val[0].image.startswith("leftImg8bit/val/frankfurt/")
    assert val[0].mask.endswith("_gtFine_labelTrainIds.png") and (root / val[0].mask).is_file()
    written = {p: p.stat().st_mtime_ns for p in root.rglob("*_gtFine_labelTrainIds.png")}
    lists = {p: p.read_text() for p in (root / "splits").rglob("*.txt")}
    prepare_cityscapes.main([str(root)])  # a second run keeps what is there
    again = capsys.readouterr().out.strip()
    assert again.startswith("cityscapes: wrote 0 *_gtFine_labelTrainIds.png files, kept 6")
    assert again.endswith(f"kept {root / 'splits' / 'val.txt'}")
    assert {p: p.stat().st_mtime_ns for p in written} == written  # not rewritten
    assert {p: p.read_text() for p in (root / "splits").rglob("*.txt")} == lists


def test_cityscapes_without_label_ids_fails_with_layout(tmp_path, capsys):
    (tmp_path / "gtFine").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        prepare_cityscapes.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no *_gtFine_labelIds.png" in err and "leftImg8bit" in err


@pytest.mark.parametrize("workers", [1, 2])
def test_coco_masks_from_instance_json(tmp_path, capsys, workers):
    pytest.importorskip("pycocotools")
    from semiseg.data.prepare import coco as prepare_coco

    root = coco(tmp_path / "coco")
    prepare_coco.main([str(root), "--workers", str(workers)])
    out = capsys.readouterr().out
    assert "train2017: wrote 4 masks" in out and "val2017: wrote 2 masks" in out
    mask = _values(root / "masks" / "000000000001.png")
    assert mask.shape == (30, 40) and mask.dtype == np.uint8
    assert mask[5, 5] == 1  # person (category id 1) -> class 1
    assert mask[10, 25] == 80  # toothbrush (category id 90, the 80th) -> class 80
    assert mask[10, 17] == 80  # the overlap: the later instance wins
    assert mask[28, 38] == 255  # crowd -> ignored
    assert mask[28, 2] == 0  # background
    val = read_list(root / "splits" / "val.txt", require_mask=True)
    assert [s.image for s in val] == ["val2017/000000000101.jpg", "val2017/000000000102.jpg"]
    assert all((root / s.mask).is_file() for s in val)


def test_coco_wrong_category_count_is_refused(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from semiseg.data.prepare import coco as prepare_coco

    root = coco(tmp_path / "coco", n_train=1, n_val=1)
    path = root / "annotations" / "instances_val2017.json"
    content = json.loads(path.read_text())
    content["categories"] = content["categories"][:-1]
    content["annotations"] = [a for a in content["annotations"] if a["category_id"] != 90]
    path.write_text(json.dumps(content))
    with pytest.raises(SystemExit):
        prepare_coco.main([str(root), "--sets", "val2017"])
    assert "has 79 categories, not the 80" in capsys.readouterr().err
    prepare_coco.main([str(root), "--sets", "train2017"])  # the train file is fine
    assert "train2017: wrote 1 masks" in capsys.readouterr().out


def test_ade20k_val_list(tmp_path, capsys):
    root = ade20k(tmp_path / "ADEChallengeData2016")
    prepare_ade20k.main([str(root)])
    val_file = root / "splits" / "val.txt"
    assert capsys.readouterr().out.strip() == f"ade20k: wrote {val_file} (2 images)"
    val = read_list(root / "splits" / "val.txt", require_mask=True)
    assert [s.mask for s in val] == [
        "annotations/validation/ADE_val_00000005.png",
        "annotations/validation/ADE_val_00000006.png",
    ]
