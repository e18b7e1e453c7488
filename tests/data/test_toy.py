import numpy as np
import pytest
from PIL import Image

from semiseg.data import toy
from semiseg.data.splits import SplitError, load_split, read_list


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(toy_root, tmp_path, capsys):
    again = toy.generate(tmp_path / "again", seed=0)
    assert "generating toy dataset in" in capsys.readouterr().out
    assert _files(again) == _files(toy_root)
    other = toy._draw_image(np.random.default_rng([1, 0, 0]))
    same = toy._draw_image(np.random.default_rng([0, 0, 0]))
    assert not np.array_equal(other[1], same[1]) or not np.array_equal(other[0], same[0])
    assert np.array_equal(same[0], np.asarray(Image.open(toy_root / "images" / "train_0000.png")))


def test_layout_and_formats(toy_root):
    classes = (toy_root / "classes.txt").read_text().split()
    assert classes == list(toy.CLASSES) and classes[0] == "background" and len(classes) == 6
    images = sorted((toy_root / "images").iterdir())
    assert len(images) == toy.NUM_TRAIN + toy.NUM_VAL == 600
    sizes, counts = set(), np.zeros(len(classes), dtype=np.int64)
    for path in images[::7]:
        img, mask = Image.open(path), Image.open(toy_root / "masks" / path.name)
        assert img.mode == "RGB" and mask.mode == "L" and img.size == mask.size
        assert all(112 <= s <= 144 for s in img.size)
        sizes.update(img.size)
        counts += np.bincount(np.asarray(mask).ravel(), minlength=len(classes))[: len(classes)]
        assert np.asarray(mask).max() < len(classes)
    assert any(s % 2 for s in sizes) and len(sizes) > 10
    assert (counts > 0).all() and counts[0] < 0.95 * counts.sum()


def test_splits_nested_and_disjoint(toy_root):
    splits = toy_root / "splits"
    val = {s.image for s in read_list(splits / "val.txt", require_mask=True)}
    assert len(val) == 100 and all(v.startswith("images/val_") for v in val)
    previous = set()
    for n in toy.SPLITS:
        files = load_split(toy_root, splits, n)
        files.check_exists()
        labeled = {s.image for s in files.labeled}
        unlabeled = {s.image for s in files.unlabeled}
        assert len(labeled) == n and len(unlabeled) == 500 - n
        assert not labeled & unlabeled and not (labeled | unlabeled) & val
        assert previous <= labeled
        previous = labeled
        assert all(s.mask is not None for s in files.unlabeled)


def test_every_class_is_labeled_in_the_largest_split(toy_root):
    files = load_split(toy_root, toy_root / "splits", max(toy.SPLITS))
    seen = set()
    for s in files.labeled:
        seen |= set(np.unique(np.asarray(Image.open(toy_root / s.mask))).tolist())
    assert seen == set(range(len(toy.CLASSES)))


def test_ensure_regenerates_only_when_needed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(toy, "NUM_TRAIN", 45)
    monkeypatch.setattr(toy, "NUM_VAL", 3)
    root = toy.ensure(tmp_path / "toy")
    assert "generating" in capsys.readouterr().out
    stamp = (root / toy.VERSION_FILE).stat().st_mtime_ns
    toy.ensure(root)
    assert capsys.readouterr().out == ""
    assert (root / toy.VERSION_FILE).stat().st_mtime_ns == stamp
    (root / toy.VERSION_FILE).write_text("0 seed=0\n")  # an older version
    toy.ensure(root)
    assert "generating" in capsys.readouterr().out and toy.is_current(root)
    (root / toy.VERSION_FILE).unlink()  # as after an interrupted generation
    (root / "images" / "train_0000.png").unlink()
    toy.ensure(root)
    assert (root / "images" / "train_0000.png").is_file() and toy.is_current(root)
    # no temporary folder left; the install lock (an empty file, held by flock) may stay
    assert sorted(p.name for p in tmp_path.iterdir()) == [".toy.lock", "toy"]


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(SplitError, match="precious.txt"):
        toy.generate(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "user data"


def test_textures_are_light_dark_patterns_of_one_hue():
    # the class lives in the pattern, not the colour: strong views (jitter, grayscale) keep it
    rng = np.random.default_rng(3)
    for _ in range(20):
        light, dark = toy._colour_pair(rng)
        assert (light >= 0.5).all() and (light <= 1).all()
        np.testing.assert_allclose(dark, 0.2 * light)
    img, mask = toy._draw_image(np.random.default_rng([0, 0, 5]))
    gray = img.mean(axis=2)
    for cls in np.unique(mask)[1:]:
        inside = gray[mask == cls]
        # two brightness levels, a factor of about five apart (lighting and noise blur it)
        assert np.percentile(inside, 90) > 2.5 * np.percentile(inside, 10)
