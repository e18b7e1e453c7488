"""The data module: which streams each kind of method gets, and the epoch length."""

from types import SimpleNamespace

import pytest

from semiseg.data.datamodule import SemiSegDataModule, load_class_names
from semiseg.data.splits import SplitError
from semiseg.errors import ConfigError


def make(toy_root, **kwargs):
    dm = SemiSegDataModule(
        root=str(toy_root),
        splits_dir=str(toy_root / "splits"),
        split="10",
        crop_size=32,
        batch_size=4,
        num_workers=0,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def test_supervised_epoch_is_the_labeled_list_as_in_the_reference(toy_root):
    dm = make(toy_root, unlabeled=False)
    assert dm.unlabeled_set is None
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert set(batch) == {"image", "mask"}
    # The public supervised.py iterates over the labeled list only: 10 images, batch 4, drop_last.
    assert len(dm.labeled_set) == 10
    assert len(loader) == 10 // 4


def test_equal_step_epochs_are_an_explicit_choice(toy_root):
    dm = make(toy_root, unlabeled=False, epoch_length="unlabeled")
    # The labeled list (10 images) is repeated to the unlabeled count (490).
    assert len(dm.labeled_set) == 490
    assert len(dm.train_dataloader()) == 490 // 4
    with pytest.raises(ConfigError, match="data.epoch_length='steps' is unknown"):
        make(toy_root, unlabeled=False, epoch_length="steps")


def test_labeled_list_is_repeated_in_file_order_and_truncated(toy_root):
    # Our transcription of the public code: ids *= ceil(n_u / n_l); ids = ids[:n_u]. No shuffle
    # before truncating (the sampler shuffles the repeated list each epoch).
    dm = make(toy_root, unlabeled=True, num_strong=2, mix="same")
    labeled, n_u = dm.files.labeled, len(dm.files.unlabeled)
    expected = (labeled * -(-n_u // len(labeled)))[:n_u]
    assert dm.labeled_set.samples == expected


def test_semi_supervised_gets_paired_streams(toy_root):
    dm = make(toy_root, unlabeled=True, num_strong=2, mix="same")
    loaders = dm.train_dataloader()
    assert set(loaders) == {"labeled", "unlabeled"}
    assert len(loaders["labeled"]) == len(loaders["unlabeled"])
    u = next(iter(loaders["unlabeled"]))
    for key in ("weak", "strong1", "strong2", "box1", "box2", "ignore", "gt", "mix_weak"):
        assert u[key].shape[0] == 4 and u[key].shape[-2:] == (32, 32)


def test_class_names_from_file_and_errors(toy_root, tmp_path):
    names = load_class_names(None, str(toy_root / "classes.txt"))
    assert names[0] == "background" and len(names) == 6
    assert load_class_names(["a", "b"], None) == ["a", "b"]
    with pytest.raises(SplitError, match="classes_file .*missing.txt does not exist"):
        load_class_names(None, str(tmp_path / "missing.txt"))
    one = tmp_path / "one.txt"
    one.write_text("only\n")
    with pytest.raises(SplitError, match="1 class"):
        load_class_names(None, str(one))


def test_missing_root_is_named(tmp_path):
    dm = SemiSegDataModule(str(tmp_path / "nowhere"), str(tmp_path / "nowhere/splits"), "10", 32)
    with pytest.raises(SplitError, match="dataset.root .*nowhere does not exist"):
        dm.setup("fit")


def test_ddp_streams_are_drawn_independently(toy_root):
    dm = make(toy_root, unlabeled=True, num_strong=2, mix="same")
    # Attached to a 2-process trainer (rank 0) at the start; only these attributes are read.
    progress = SimpleNamespace(current=SimpleNamespace(completed=0))
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0, current_epoch=0, fit_loop=loop)
    loaders = dm.train_dataloader()
    labeled, unlabeled = loaders["labeled"].sampler, loaders["unlabeled"].sampler
    assert len(dm.labeled_set) == len(dm.unlabeled_set) == 490
    for epoch in (0, 1):
        labeled.set_epoch(epoch), unlabeled.set_epoch(epoch)
        # (index, augmentation seed) pairs: compare the indices
        pairs = [(a, b) for (a, _), (b, _) in zip(labeled, unlabeled, strict=True)]
        # With one seed for both (Lightning's default sampler) every pair would be (j, j): the
        # labeled image j mod 10 always drawn with unlabeled image j. Independent: about 1/490.
        same = sum(a == b for a, b in pairs) / len(pairs)
        assert same < 0.05, (epoch, same)
    assert loaders["labeled"].batch_size == 4 and loaders["labeled"].drop_last
