"""Generated splits: by count or fraction, seeded, nested, never overlapping val."""

import pytest
from layouts import custom_folders

from semiseg.data.prepare import splits as gen
from semiseg.data.spec import DatasetSpec
from semiseg.data.splits import Sample, SplitError, load_split, read_list, write_list, write_split


def _images(samples):
    return {s.image for s in samples}


def test_plain_folders_get_val_and_split(tmp_path):
    root = custom_folders(tmp_path / "plants", n_masked=10, n_unmasked=2)
    made = gen.generate(root, root / "splits", "1/8", seed=0, val_fraction=0.1)
    # 10 masked: 1 held out for val; pool 11 (9 masked + 2 without masks); ceil(11 / 8) = 2
    assert made.created and made.val_written and len(made.val) == 1
    assert len(made.labeled) == 2 and len(made.unlabeled) == 9
    assert made.folder == root / "splits" / "2"
    files = load_split(root, root / "splits", 2)
    labeled, unlabeled, val = _images(files.labeled), _images(files.unlabeled), _images(files.val)
    assert not (labeled & unlabeled) and not (labeled & val) and not (unlabeled & val)
    assert len(labeled | unlabeled | val) == 12
    assert all(s.mask for s in files.labeled + files.val)
    assert sum(s.mask is None for s in files.unlabeled) == 2  # images without masks
    files.check_exists()


def test_generation_is_seeded_and_nested(tmp_path):
    root = custom_folders(tmp_path / "plants", n_masked=12, n_unmasked=0)
    write_list(root / "splits" / "val.txt", [Sample("images/plant_000.png", "masks/plant_000.png")])
    small = gen.generate(root, root / "splits", 2, seed=3)
    large = gen.generate(root, root / "splits", 5, seed=3)
    assert not small.val_written and _images(small.labeled) < _images(large.labeled)
    assert "images/plant_000.png" not in _images(large.labeled) | _images(large.unlabeled)
    again = gen.generate(root, root / "splits", 5, seed=3, overwrite=True)  # same pool and seed
    assert again.labeled == large.labeled
    other_seed = gen.generate(root, root / "splits", 5, seed=4, overwrite=True)
    assert other_seed.labeled != large.labeled


def test_pool_from_existing_splits_excludes_val(tmp_path):
    pairs = [Sample(f"i{k}.png", f"m{k}.png") for k in range(8)]
    write_split(tmp_path / "splits", 4, pairs[:4], pairs[4:7])
    write_split(tmp_path / "splits", 2, pairs[:2], [*pairs[2:6], Sample("u.png", None)])
    write_list(tmp_path / "splits" / "val.txt", [pairs[7], pairs[6]])
    pool = gen.pool_from_splits(tmp_path / "splits")
    assert len(pool) == 8 and Sample("u.png", None) in pool
    made = gen.generate(tmp_path, tmp_path / "splits", 3, seed=0)
    assert _images(made.labeled + made.unlabeled) == {f"i{k}.png" for k in range(6)} | {"u.png"}
    assert len(made.labeled) == 3 and all(s.mask for s in made.labeled)


def test_generation_errors(tmp_path):
    root = custom_folders(tmp_path / "plants", n_masked=4, n_unmasked=0)
    with pytest.raises(SplitError, match="cannot label 9 images: the pool has 3 images with masks"):
        gen.generate(root, root / "splits", 9)
    with pytest.raises(SplitError, match="cannot generate split 'best'"):
        gen.generate(root, root / "splits", "best")
    gen.generate(root, root / "splits", 1)
    with pytest.raises(SplitError, match="already exists; pass --force"):
        gen.generate(root, root / "splits", 1)
    assert gen.generate(root, root / "splits", 1, overwrite=True).created
    assert not gen.generate(root, root / "splits", 1, reuse=True).created
    with pytest.raises(SplitError, match="images does not exist"):
        gen.generate(tmp_path, tmp_path / "splits", 1)


def test_command_line(tmp_path, capsys):
    root = custom_folders(tmp_path / "plants", n_masked=10, n_unmasked=0)
    made = gen.main([str(root), "--fraction", "1/3", "--seed", "1"])
    out = capsys.readouterr().out.strip()
    assert out.startswith("wrote split 3: 3 labeled + 6 unlabeled images (seed 1)")
    assert len(out.splitlines()) == 1 and made.folder == root / "splits" / "3"
    assert len(read_list(root / "splits" / "val.txt", require_mask=True)) == 1
    with pytest.raises(SystemExit) as exit_info:
        gen.main([str(root), "--count", "3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: split ")


def test_custom_and_toy_generate_missing_splits_and_say_so(tmp_path):
    root = custom_folders(tmp_path / "plants", n_masked=10, n_unmasked=0)
    spec = DatasetSpec.from_config(
        {"root": root, "splits_dir": root / "splits", "name": "custom", "generate_splits": True}
    )
    split, note = spec.resolve_split("1/4")
    folder = split.folder
    assert folder == root / "splits" / "3" and note.startswith("split 1/4: generated 3 labeled")
    again, note_again = spec.resolve_split("1/4")  # the same split, found this time
    assert (again.folder, note_again) == (folder, None)
    assert spec.resolve_split(3)[0].folder == folder
    with pytest.raises(SplitError, match="unknown split 'best' for custom: valid splits are 3"):
        spec.resolve_split("best")
