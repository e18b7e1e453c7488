import pytest

from semiseg.data.splits import (
    Sample,
    SplitError,
    available_splits,
    load_split,
    read_list,
    resolve_split,
    split_name,
    write_list,
    write_split,
)


def _one_line(err):
    message = str(err.value)
    assert "\n" not in message
    return message


def test_read_list_good_file_with_blank_lines_and_crlf(tmp_path):
    f = tmp_path / "labeled.txt"
    f.write_bytes(b"a/1.jpg m/1.png\r\n\r\n   \n a/2.jpg\tm/2.png \n")
    assert read_list(f, require_mask=True) == [
        Sample("a/1.jpg", "m/1.png"),
        Sample("a/2.jpg", "m/2.png"),
    ]


def test_read_list_unlabeled_lines_may_lack_masks(tmp_path):
    f = tmp_path / "unlabeled.txt"
    f.write_text("a/1.jpg\na/2.jpg m/2.png\n")
    assert read_list(f, require_mask=False) == [
        Sample("a/1.jpg", None),
        Sample("a/2.jpg", "m/2.png"),
    ]


def test_read_list_missing_mask_names_file_and_line(tmp_path):
    f = tmp_path / "labeled.txt"
    f.write_text("a/1.jpg m/1.png\n\na/3.jpg\n")
    with pytest.raises(SplitError) as err:
        read_list(f, require_mask=True)
    message = _one_line(err)
    assert str(f) in message and "line 3" in message and "a/3.jpg" in message


def test_read_list_too_many_fields(tmp_path):
    f = tmp_path / "val.txt"
    f.write_text("a/1.jpg m/1.png extra\n")
    with pytest.raises(SplitError) as err:
        read_list(f, require_mask=False)
    message = _one_line(err)
    assert str(f) in message and "line 1" in message and "3 fields" in message


def test_read_list_missing_file(tmp_path):
    with pytest.raises(SplitError) as err:
        read_list(tmp_path / "nope.txt", require_mask=True)
    assert "nope.txt" in _one_line(err)


def test_split_name_normalises_hydra_values():
    assert split_name(1464) == "1464"
    assert split_name("1_16") == "1_16"


def test_available_splits_sorted_numerically(tmp_path):
    for name in ("100", "20", "1_16", "40", "no_labeled"):
        (tmp_path / name).mkdir()
        if name != "no_labeled":
            (tmp_path / name / "labeled.txt").write_text("a b\n")
    assert available_splits(tmp_path) == ["20", "40", "100", "1_16"]
    assert available_splits(tmp_path / "missing") == []


def test_resolve_split_unknown_lists_valid_ones(tmp_path):
    for name in ("40", "20"):
        write_split(tmp_path, name, [Sample("a", "b")], [])
    assert resolve_split(tmp_path, 20) == tmp_path / "20"
    with pytest.raises(SplitError) as err:
        resolve_split(tmp_path, 7)
    assert _one_line(err) == f"unknown split '7' in {tmp_path}: valid splits are 20, 40"


def test_resolve_split_missing_dir_describes_layout(tmp_path):
    with pytest.raises(SplitError) as err:
        resolve_split(tmp_path / "splits", 10)
    message = _one_line(err)
    assert "does not exist" in message and "labeled.txt" in message and "val.txt" in message


def test_write_and_load_split_roundtrip(tmp_path):
    labeled = [Sample("img/a.jpg", "mask/a.png")]
    unlabeled = [Sample("img/b.jpg", None), Sample("img/c.jpg", "mask/c.png")]
    val = [Sample("img/v.jpg", "mask/v.png")]
    splits = tmp_path / "splits"
    write_split(splits, 1, labeled, unlabeled)
    write_list(splits / "val.txt", val)
    files = load_split(tmp_path, splits, 1)
    assert (files.labeled, files.unlabeled, files.val) == (labeled, unlabeled, val)
    assert sorted(p.name for p in (splits / "1").iterdir()) == ["labeled.txt", "unlabeled.txt"]


def test_load_split_without_unlabeled_file(tmp_path):
    write_list(tmp_path / "2" / "labeled.txt", [Sample("a", "b")])
    write_list(tmp_path / "val.txt", [Sample("c", "d")])
    assert load_split(tmp_path, tmp_path, "2").unlabeled == []


def test_write_list_rejects_paths_with_spaces(tmp_path):
    with pytest.raises(SplitError):
        write_list(tmp_path / "x.txt", [Sample("my image.jpg", "m.png")])
    assert not list(tmp_path.iterdir())


def test_check_exists_names_first_three_and_count(tmp_path):
    splits = tmp_path / "splits"
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.jpg").write_bytes(b"")
    (tmp_path / "img" / "ok.png").write_bytes(b"")
    write_split(
        splits, 5, [Sample("img/ok.jpg", "img/ok.png"), Sample("x1", "x2")], [Sample("x3", None)]
    )
    write_list(splits / "val.txt", [Sample("x4", "x5")])
    files = load_split(tmp_path, splits, 5)
    assert files.missing() == ["x1", "x2", "x3", "x4", "x5"]
    with pytest.raises(SplitError) as err:
        files.check_exists()
    message = _one_line(err)
    assert message.startswith("5 files") and "x1, x2, x3" in message and "x4" not in message
    for name in ("x1", "x2", "x3", "x4", "x5"):
        (tmp_path / name).write_bytes(b"")
    files.check_exists(tmp_path)
