"""The simulated loop's first split and its learning-curve plot (the rounds are train.py and
select_images.py, tested on their own)."""

from semiseg.data.splits import load_split, read_list
from semiseg.tools.select_loop import best_miou, first_split, plot, table, train_once


def test_first_split_takes_the_first_labeled_and_pool_images(toy_root, tmp_path):
    folder = first_split(toy_root, tmp_path, start=5, pool=7)
    files = load_split(toy_root, folder, "5")
    source = toy_root / "splits" / "40"
    assert files.labeled == read_list(source / "labeled.txt", require_mask=True)[:5]
    assert files.unlabeled == read_list(source / "unlabeled.txt", require_mask=False)[:7]
    assert all(s.mask for s in files.unlabeled)  # revealed when chosen
    assert len(files.val) == 100


def test_plot_writes_the_curves(tmp_path):
    rows = [
        {"strategy": s, "seed": seed, "labeled": n, "miou": 20.0 + n + seed}
        for s in ("random", "entropy")
        for seed in (0, 1)
        for n in (10, 20)
    ]
    plot(tmp_path / "loop.png", rows)
    assert (tmp_path / "loop.png").stat().st_size > 0


def test_table_gives_mean_and_population_std_over_seeds():
    rows = [
        {"strategy": "random", "seed": 0, "labeled": 10, "miou": 20.0},
        {"strategy": "random", "seed": 1, "labeled": 10, "miou": 30.0},
        {"strategy": "entropy", "seed": 0, "labeled": 10, "miou": 21.0},
        {"strategy": "entropy", "seed": 1, "labeled": 10, "miou": 21.0},
        {"strategy": "random", "seed": 0, "labeled": 20, "miou": 40.0},
    ]
    assert table(rows).splitlines() == [
        "| labeled images | random | entropy |",
        "|---|---|---|",
        "| 10 | 25.00 +- 5.00 (2) | 21.00 +- 0.00 (2) |",
        "| 20 | 40.00 +- 0.00 (1) |  |",
    ]


def test_a_finished_round_is_read_not_trained_again(tmp_path):
    (tmp_path / "results.json").write_text('{"best_val_miou": 12.5}')
    train_once(tmp_path, "no_such_key=1")  # train.py would fail on this override
    assert best_miou(tmp_path) == 12.5
