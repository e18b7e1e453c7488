"""Split names: counts, `1/16` aliases, UniMatch's fraction-named folders, per-split crops."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import semiseg.data  # noqa: F401  (registers the config resolvers)
from semiseg.data.spec import DatasetSpec
from semiseg.data.splits import (
    Sample,
    SplitError,
    find_split,
    fraction_key,
    Split,
    write_list,
    write_split,
)

PASCAL_ALIASES = {"1/16": 662, "1/8": 1323, "1/4": 2646}
REPO_CONF = __import__("pathlib").Path(__file__).resolve().parents[2] / "conf"


def test_fraction_key():
    assert fraction_key("1/16") == fraction_key("1_16") == fraction_key(" 1 / 16 ") == "1/16"
    assert fraction_key("116") is None and fraction_key("u2pl_1_16") is None
    assert fraction_key("16/1") is None and fraction_key("0/4") is None


def parsed(split):
    found = Split.parse(split, PASCAL_ALIASES)
    return found.count, list(found.candidates)


def test_split_parse_aliases_counts_and_names():
    for split in ("1/16", 662, "662"):
        assert parsed(split) == (662, ["662", "1_16"])
        assert Split.parse(split, PASCAL_ALIASES).name == str(split)
    assert parsed("1_16") == (662, ["1_16", "662"])  # as typed first
    assert parsed(92) == (92, ["92"])
    assert parsed("u2pl_1_16") == (None, ["u2pl_1_16"])
    assert parsed("1/32") == (None, [])  # no alias: not a folder name


def test_find_split_reads_unimatch_fraction_folders(tmp_path):
    write_split(tmp_path, "1_16", [Sample("a", "b")], [])
    assert find_split(tmp_path, "1/16", PASCAL_ALIASES) == tmp_path / "1_16"
    assert find_split(tmp_path, 662, PASCAL_ALIASES) == tmp_path / "1_16"
    assert find_split(tmp_path, 1323, PASCAL_ALIASES) is None
    write_split(tmp_path, "662", [Sample("a", "b")], [])  # a count folder wins over 1_16
    assert find_split(tmp_path, "1/16", PASCAL_ALIASES) == tmp_path / "662"


def _spec(tmp_path, **kwargs):
    defaults = dict(
        root=tmp_path,
        splits_dir=tmp_path / "splits",
        name="pascal",
        splits=[92, 183, 662],
        split_aliases=PASCAL_ALIASES,
    )
    return DatasetSpec.from_config(None, **{**defaults, **kwargs})


def test_any_folder_under_splits_dir_is_a_valid_split(tmp_path):
    spec = _spec(tmp_path)
    write_split(tmp_path / "splits", "mine", [Sample("a", "b")], [])
    assert spec.resolve_split("mine")[0].folder == tmp_path / "splits" / "mine"
    assert spec.valid_splits() == ["92", "183", "662", "mine"]


def test_unknown_split_lists_valid_ones_and_aliases(tmp_path):
    spec = _spec(tmp_path)
    write_split(tmp_path / "splits", "92", [Sample("a", "b")], [])
    with pytest.raises(SplitError) as err:
        spec.resolve_split(7)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown split '7' for pascal: valid splits are 92, 183, 662")
    assert "1/16=662" in message


def test_hydra_underscore_parse_is_explained(tmp_path):
    # `split=1_16` reaches the program as the int 116
    with pytest.raises(SplitError, match=r"Hydra reads split=1_16 as 116: write split=1/16"):
        _spec(tmp_path).resolve_split(116)


def test_known_split_missing_on_disk_says_where_to_put_it(tmp_path):
    with pytest.raises(SplitError) as err:
        _spec(tmp_path).resolve_split("1/16")
    message = str(err.value)
    assert "split 1/16 of pascal is not in" in message
    assert "662/labeled.txt or 1_16/labeled.txt" in message
    assert "UniMatch splits/pascal/" in message


def test_split_crop_resolver():
    def crop(split):
        cfg = OmegaConf.create(
            {
                "split": split,
                "dataset": {
                    "crop_size": "${semiseg.split_crop:321}",
                    "split_crop_size": {662: 513},
                    "split_aliases": PASCAL_ALIASES,
                },
            }
        )
        return cfg.dataset.crop_size

    assert crop("1/16") == crop(662) == crop("1_16") == 513
    assert crop(92) == crop("1/8") == 321
    no_split = OmegaConf.create({"dataset": {"crop_size": "${semiseg.split_crop:321}"}})
    assert no_split.dataset.crop_size == 321


@pytest.mark.parametrize(
    "dataset, split, crop",
    [
        # the public training logs: UniMatch's blended splits at 321, U2PL's at 513
        ("pascal", "1/16", 321),
        ("pascal", 662, 321),
        ("pascal", "u2pl_1_16", 513),
        ("pascal", "u2pl_1_4", 513),
        ("pascal", 92, 321),
        ("cityscapes", 744, 801),
        ("ade20k", "1/8", 512),
    ],
)
def test_dataset_configs_compose(dataset, split, crop):
    with initialize_config_dir(config_dir=str(REPO_CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}", f"split={split}"])
    assert cfg.dataset.crop_size == crop
    assert cfg.data.dataset.name == dataset
    spec = DatasetSpec.from_config(cfg.dataset)
    assert len(spec.class_names()) == {"pascal": 21, "cityscapes": 19, "ade20k": 150}[dataset]
    for key in ("palette", "eval_mode", "splits", "split_aliases", "layout"):
        assert key in cfg.dataset


def test_every_dataset_config_names_what_the_issue_asks(tmp_path):
    expected = {
        "pascal": (21, "original", "voc"),
        "cityscapes": (19, "sliding_window", "cityscapes"),
        "coco": (81, "original", None),
        "ade20k": (150, "original", None),
        "custom": (None, "original", None),
        "toy": (None, "original", None),
    }
    for name, (classes, mode, palette) in expected.items():
        cfg = OmegaConf.load(REPO_CONF / "dataset" / f"{name}.yaml")
        if classes is not None:
            assert len(cfg.classes) == classes, name
        assert cfg.eval_mode == mode and cfg.palette == palette, name
        for key in ("crop_size", "splits", "split_aliases", "label_map", "layout"):
            assert key in cfg, (name, key)
    ade = OmegaConf.load(REPO_CONF / "dataset" / "ade20k.yaml")
    assert ade.label_map == "reduce_zero" and len(set(ade.classes)) == 150


def test_val_list_missing_names_path_and_layout(tmp_path):
    spec = _spec(tmp_path, layout="<root>/JPEGImages/*.jpg ...")
    with pytest.raises(SplitError) as err:
        spec.load_val()
    message = str(err.value)
    assert str(tmp_path / "splits" / "val.txt") in message and "JPEGImages" in message
    write_list(tmp_path / "splits" / "val.txt", [Sample("x.jpg", "y.png")])
    with pytest.raises(SplitError, match="2 files listed in the splits are missing"):
        spec.load_val()
