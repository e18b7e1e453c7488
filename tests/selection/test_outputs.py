"""The next round's split: old labeled + chosen, the rest unlabeled, the old split untouched."""

import numpy as np
import pytest
from PIL import Image

from semiseg.data.splits import Sample, load_split, read_list, write_split
from semiseg.errors import ConfigError
from semiseg.selection import outputs

LABELED = [Sample("images/a.png", "masks/a.png")]
POOL = [
    Sample("images/u0.png", "masks/u0.png"),
    Sample("images/sub/u1.jpg", None),
    Sample("images/u2.png", "masks/u2.png"),
]


def test_next_round_appends_the_chosen_in_order_and_keeps_the_rest_in_pool_order():
    labeled, unlabeled, picked = outputs.next_round(LABELED, POOL, np.array([2, 1]))
    # u1 had no mask: it is expected beside the labeled masks, with the labeled masks' suffix
    assert picked == [
        Sample("images/u2.png", "masks/u2.png"),
        Sample("images/sub/u1.jpg", "masks/u1.png"),
    ]
    assert labeled == [LABELED[0], *picked]
    assert unlabeled == [POOL[0]]


def test_next_round_refuses_a_repeated_index():
    with pytest.raises(ValueError, match="repeat"):
        outputs.next_round(LABELED, POOL, [1, 1])


def test_mask_path_follows_the_labeled_masks():
    assert (
        outputs.mask_path_for("img/x/y.jpg", [Sample("a.jpg", "gt/fine/a.png")]) == "gt/fine/y.png"
    )


def test_written_split_loads_and_the_old_split_is_untouched(tmp_path):
    root = tmp_path / "data"
    for sample in (*LABELED, *POOL):
        for rel in sample:
            if rel:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(b"x")
    (root / "masks" / "u1.png").write_bytes(b"x")  # the annotator drew it
    old = tmp_path / "splits"
    write_split(old, "1", LABELED, POOL)
    (old / "val.txt").write_text("images/a.png masks/a.png\n")
    before = {p: p.read_bytes() for p in old.rglob("*.txt")}

    labeled, unlabeled, _ = outputs.next_round(LABELED, POOL, [1])
    out = tmp_path / "next"
    folder = outputs.write_next_split(out, "2", labeled, unlabeled, old / "val.txt")

    assert folder == out / "2"
    files = load_split(root, out, "2")  # what train.py dataset.splits_dir=out split=2 reads
    assert files.labeled == [LABELED[0], Sample("images/sub/u1.jpg", "masks/u1.png")]
    assert files.unlabeled == [POOL[0], POOL[2]]
    assert files.val == read_list(old / "val.txt", require_mask=True)
    assert {p: p.read_bytes() for p in old.rglob("*.txt")} == before
    with pytest.raises(ConfigError, match="exists: give another output=DIR or split_name"):
        outputs.write_next_split(out, "2", labeled, unlabeled, old / "val.txt")
    # written into the old splits folder itself: val.txt is kept, split 1 untouched
    outputs.write_next_split(old, "2", labeled, unlabeled, old / "val.txt")
    assert {p: p.read_bytes() for p in old.rglob("*.txt") if "/2/" not in str(p)} == before


def test_scores_csv_lists_every_pool_image_with_its_rank(tmp_path):
    scores = {"entropy": np.array([0.1, 0.5, 0.25]), "margin": np.array([0.2, 0.3, 0.4])}
    outputs.write_scores_csv(tmp_path / "scores.csv", [s.image for s in POOL], scores, [2, 0])
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines == [
        "index,image,entropy,margin,chosen_rank",
        "0,images/u0.png,0.100000,0.200000,2",
        "1,images/sub/u1.jpg,0.500000,0.300000,",
        "2,images/u2.png,0.250000,0.400000,1",
    ]


def test_contact_sheet_shows_each_chosen_image_beside_its_map(tmp_path):
    green = Image.new("RGB", (40, 30), (0, 200, 0))
    maps = [np.zeros((10, 10)), np.ones((10, 10))]
    shown = outputs.contact_sheet(tmp_path / "sheet.png", [[green], [green]], maps, ["#1", "#2"])
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert shown == 2
    tile = outputs.TILE
    assert tuple(sheet[5, 5]) == (0, 200, 0)  # the image
    cell = 2 * tile + 8
    certain, uncertain = sheet[5, tile + 5], sheet[5, cell + tile + 5]
    assert certain.sum() < 30 and uncertain.sum() > 500  # magma: dark at 0, bright at 1


def test_contact_sheet_shows_both_images_of_a_pair_before_the_map(tmp_path):
    a, b = Image.new("RGB", (20, 20), (200, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 200))
    outputs.contact_sheet(tmp_path / "sheet.png", [[a, b]], [np.ones((4, 4))], ["#1"])
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    tile = outputs.TILE
    assert sheet.shape[1] == outputs.SHEET_COLUMNS * (3 * tile + 8)  # image, image, map
    assert tuple(sheet[5, 5]) == (200, 0, 0) and tuple(sheet[5, tile + 5]) == (0, 0, 200)
    assert sheet[5, 2 * tile + 5].sum() > 500  # the map after both images


def test_next_round_of_one_name_per_line_lists_keeps_no_mask(tmp_path):
    labeled = [Sample("data/slices/a_slice_0.h5", None)]
    pool = [Sample("data/slices/b_slice_0.h5", None), Sample("data/slices/b_slice_1.h5", None)]
    new, rest, picked = outputs.next_round(labeled, pool, [1], masks_listed=False)
    assert new == [labeled[0], pool[1]] and rest == [pool[0]] and picked == [pool[1]]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "valtest.txt").write_text("data/v1.h5\ndata/v2.h5\n")
    outputs.write_next_split(
        tmp_path / "out", "2", new, rest, tmp_path / "old" / "valtest.txt", masks_listed=False
    )
    assert (tmp_path / "out" / "valtest.txt").read_text() == "data/v1.h5\ndata/v2.h5\n"
    assert (tmp_path / "out" / "2" / "labeled.txt").read_text() == (
        "data/slices/a_slice_0.h5\ndata/slices/b_slice_1.h5\n"
    )
