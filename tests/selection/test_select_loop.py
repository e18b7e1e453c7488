"""The simulated loop's first split and its learning-curve plot (the rounds are train.py and
select_images.py, tested on their own)."""

from semiseg.data.splits import load_split, read_list
from semiseg.tools.select_loop import first_split, plot


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
