from semiseg.tools.compare import DEFAULT_SPLIT, markdown_table, split_methods, with_defaults


def test_default_split_only_when_none_is_given():
    assert with_defaults(["trainer.max_steps=5"]) == [
        f"split={DEFAULT_SPLIT}",
        "trainer.max_steps=5",
    ]
    assert with_defaults(["split=20", "seed=1"]) == ["split=20", "seed=1"]


def _result(best, last, minutes):
    return {
        "split": 10,
        "steps": 1000,
        "best_val_miou": best,
        "val_miou": last,
        "wall_time_s": minutes * 60,
    }


def test_table_gains_are_against_the_supervised_best():
    table = markdown_table(
        {
            "supervised": _result(42.10, 39.13, 3.5),
            "fixmatch": _result(55.04, 55.04, 9.0),
            "unimatch": None,
        }
    ).splitlines()
    assert table[2] == "| supervised | 10 | 1000 | 42.10 | 39.13 | +0.00 | 3.5 min |"
    # 55.04 - 42.10 = 12.94
    assert table[3] == "| fixmatch | 10 | 1000 | 55.04 | 55.04 | +12.94 | 9.0 min |"
    assert table[4] == "| unimatch | - | - | missing | missing | - | - |"


def test_methods_argument_is_taken_out_of_the_overrides():
    methods, rest = split_methods(["methods=supervised,imas,augseg", "seed=1"], "unimatch")
    assert methods == ["supervised", "imas", "augseg"] and rest == ["seed=1"]
    assert split_methods(["seed=1"], "supervised,unimatch") == (
        ["supervised", "unimatch"],
        ["seed=1"],
    )
