"""Sweeps (`train.py -m`) and their paper table (`python -m semiseg.tools.report`)."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from cli import REPO, TINY, run_script
from wandb_records import summarize

from semiseg.tools.report import report


def _job(root, name, overrides, results=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"seed": 0, "split": "${dataset.default_split}", "dataset": {"name": "toy"}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))


def _results(method, split, seed, best):
    return {
        "method": method,
        "dataset": "toy",
        "split": split,
        "seed": seed,
        "val_miou": best - 1,
        "best_val_miou": best,
    }


def test_report_table_with_failed_and_missing_runs(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = ["method=supervised,unimatch", "split=10,20", "seed=0,1", "dataset.root=/x"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    values = {("supervised", "10"): (40.0, 42.0), ("supervised", "20"): (50.0, 54.0)}
    n = 0
    for (method, split), pair in values.items():
        for seed, best in enumerate(pair):
            _job(
                sweep,
                f"{n}",
                [f"method={method}", f"split={split}", f"seed={seed}"],
                _results(method, split, seed, best),
            )
            n += 1
    # unimatch/10: seed 0 finished, seed 1 failed (no results.json); unimatch/20: never started
    _job(sweep, "a", ["method=unimatch", "split=10", "seed=0"], _results("unimatch", "10", 0, 61))
    _job(sweep, "b", ["method=unimatch", "split=10", "seed=1"])
    # an eval.py run in the tree is not a training run
    (sweep / "eval" / ".hydra").mkdir(parents=True)
    (sweep / "eval" / ".hydra" / "config.yaml").write_text("ckpt_path: x.ckpt\n")

    markdown = report(sweep)
    table, gains = markdown.split("gain over supervised")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "|" in line}
    assert "| method | 10 | 20 |" in markdown
    # seed 1 failed: the gain pairs seed 0 alone (61 - 40); at split 20 no seed is shared
    assert "| unimatch | +21.00 (1/2 seeds) | no shared seed |" in gains
    assert "41.00 ± 1.41" in rows["supervised"] and "52.00 ± 2.83" in rows["supervised"]
    assert "61.00 (1/2; seed 1 failed)" in rows["unimatch"]
    assert "missing" in rows["unimatch"].split("|")[3]
    with open(sweep / "report.csv") as f:
        table = {(r["method"], r["split"]): r for r in csv.DictReader(f)}
    assert (
        table[("supervised", "20")]["mean"] == "52.0" and table[("supervised", "20")]["runs"] == "2"
    )
    assert table[("unimatch", "10")]["failed_seeds"] == "1"
    assert table[("unimatch", "20")]["missing_seeds"] == "0;1"
    assert (sweep / "report.png").stat().st_size > 1000


def test_gain_over_the_baseline_is_paired_by_seed(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    best = {
        "supervised": {0: 40.0, 1: 46.0, 2: 43.0},
        "unimatch": {0: 45.0, 1: 50.0, 2: 47.0},  # gains 5, 4, 4
        "fixmatch": {0: 41.0, 2: 53.0},  # seed 1 never ran: gains 1 and 10 only
    }
    for method, values in best.items():
        for seed, value in values.items():
            overrides = [f"method={method}", "split=10", f"seed={seed}"]
            _job(sweep, f"{method}{seed}", overrides, _results(method, "10", seed, value))

    markdown = report(sweep)
    gains = markdown.split("gain over supervised")[1]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in gains.splitlines()
            if line.startswith("| ") and "method" not in line}  # fmt: skip
    # mean 13/3; deviations 2/3, -1/3, -1/3: sample std sqrt((4/9 + 1/9 + 1/9) / 2) = 0.577
    assert rows["unimatch"] == "+4.33 ± 0.58"
    assert rows["fixmatch"] == "+5.50 ± 6.36 (2/3 seeds)"  # mean of 1 and 10; std 9 / sqrt(2)
    assert "supervised" not in rows
    assert "gain over" not in report(sweep, baseline=None)

    # --per-seed: the seeds as columns, the baseline first (supervised: mean 43, deviations
    # -3, 3, 0, std 3; unimatch: mean 142/3, std sqrt(38/6) = 2.52; fixmatch: std 12/sqrt(2))
    per_seed = report(sweep, per_seed=True).split("split 10: best val mIoU (%) per seed")[1]
    assert [line for line in per_seed.splitlines() if line.startswith("| ")] == [
        "| method | seed 0 | seed 1 | seed 2 | mean ± std | gain over supervised, paired by seed |",
        "| supervised | 40.00 | 46.00 | 43.00 | 43.00 ± 3.00 |  |",
        "| fixmatch | 41.00 | missing | 53.00 | 47.00 ± 8.49 (2/3; seed 1 missing) "
        "| +5.50 ± 6.36 (2/3 seeds) |",
        "| unimatch | 45.00 | 50.00 | 47.00 | 47.33 ± 2.52 | +4.33 ± 0.58 |",
    ]
    no_gain = report(sweep, baseline=None, per_seed=True).split("per seed")[1]
    assert "| method | seed 0 | seed 1 | seed 2 | mean ± std |\n" in no_gain
    assert "paired" not in no_gain


def test_runs_differing_in_other_overrides_are_not_merged(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    best = {("0.9", 0): 50.0, ("0.9", 1): 52.0, ("0.95", 0): 60.0, ("0.95", 1): 64.0}
    for n, ((tau, seed), value) in enumerate(best.items()):
        # where the data lives and how the job was resumed do not make another run
        extra = [f"dataset.root=/disk{seed}"] + (["resume=auto"] if seed else [])
        overrides = ["method=unimatch", "split=10", f"seed={seed}", f"method.tau={tau}", *extra]
        _job(sweep, f"{n}", overrides, _results("unimatch", "10", seed, value))
    # a sweep over the encoder of the supervised baseline
    _job(sweep, "r18", ["method=supervised", "split=10", "seed=0", "model.encoder=resnet18"],
         _results("supervised", "10", 0, 30.0))  # fmt: skip
    _job(sweep, "r50", ["method=supervised", "split=10", "seed=0", "model.encoder=resnet50"],
         _results("supervised", "10", 0, 40.0))  # fmt: skip

    markdown = report(sweep)
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert lines[0] == "| method | method.tau | model.encoder | 10 |"
    assert lines[1:] == [
        "| supervised | default | resnet18 | 30.00 (1/2; seed 1 missing) |",
        "| supervised | default | resnet50 | 40.00 (1/2; seed 1 missing) |",
        "| unimatch | 0.9 | default | 51.00 ± 1.41 |",
        "| unimatch | 0.95 | default | 62.00 ± 2.83 |",
    ]
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["method.tau"], r["model.encoder"], r["mean"]) for r in rows] == [
        ("supervised", "default", "resnet18", "30.0"),
        ("supervised", "default", "resnet50", "40.0"),
        ("unimatch", "0.9", "default", "51.0"),
        ("unimatch", "0.95", "default", "62.0"),
    ]


def test_report_of_an_empty_folder_fails_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "semiseg.tools.report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: no runs under")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, toy_root):
    """A 2 x 2 sweep (methods x splits) with the basic launcher, W&B offline, plus a split that
    does not exist: its two jobs fail at once and the sweep goes on."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "sweep"
    proc = run_script(
        "train.py",
        "-m",
        "method=supervised,fixmatch",
        "split=10,20,seven",
        f"dataset.root={toy_root}",
        *TINY,
        "logger=wandb",
        "logger.panel_images=2",
        "trainer.log_every_n_steps=1",
        f"hydra.sweep.dir={sweep_dir}",
        env={"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"},
    )
    # Hydra reports the first failed job at the end, after running all of them
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("error: unknown split 'seven'") == 2
    return sweep_dir, proc


@pytest.mark.slow
@pytest.mark.slow  # the module's two-job sweep through train.py -m (about 70 s on 2 cores)
def test_sweep_runs_every_job_and_reports_the_table(sweep):
    sweep_dir, proc = sweep
    assert len(list(sweep_dir.glob("*/.hydra"))) == 6
    results = sorted(sweep_dir.glob("*/results.json"))
    assert len(results) == 4
    records = [json.loads(path.read_text()) for path in results]
    best = {(r["method"], r["split"]): r["best_val_miou"] for r in records}
    assert set(best) == {(m, s) for m in ("supervised", "fixmatch") for s in ("10", "20")}
    out = subprocess.run(
        [sys.executable, "-m", "semiseg.tools.report", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table, gains = out.stdout.split("gain over supervised")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| method | 10 | 20 | seven |"
    gain = next(line for line in gains.splitlines() if line.startswith("| fixmatch"))
    for split, cell in zip(("10", "20"), gain.split("|")[2:4], strict=True):
        assert float(cell) == pytest.approx(
            best["fixmatch", split] - best["supervised", split], abs=0.006
        )
    assert gain.split("|")[4].strip() == "no shared seed"
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["supervised", "fixmatch"]
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("|")[2:5]]
        assert all(float(c) >= 0 for c in cells[:2]), line  # one seed: the value, no std
        assert cells[2] == "failed (seed 0)", line
    assert (sweep_dir / "report.png").is_file() and (sweep_dir / "report.csv").is_file()


@pytest.mark.slow  # the same sweep
def test_sweep_jobs_log_to_their_own_wandb_runs(sweep):
    sweep_dir, _ = sweep
    for job in sorted(p.parent for p in sweep_dir.glob("*/results.json")):
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, job  # a W&B run per job, finished before the next job
        logged = summarize(runs[0])
        method, split = job.name.split("_")[1], job.name.split("_")[3]
        run = logged["run"]
        assert run.display_name == f"{method}-toy-{split}-s0"
        assert set(run.tags) == {method, "toy", f"split-{split}", "seed-0"}
        assert run.run_group == f"sweep-{sweep_dir.name}"  # the sweep's runs are grouped
        assert run.job_type == f"{method}-toy-{split}"
        # the resolved Hydra config is the run config
        assert json.loads(logged["config"]["method"])["name"] == method
        assert json.loads(logged["config"]["split"]) == split
        expected = {
            "train/loss",
            "train/lr_backbone",
            "train/lr_head",
            "val/miou",
            "val/best_miou",
            "val/per_class_iou",
            "val/samples",
            "val_iou/background",
        }
        if method == "fixmatch":
            expected |= {
                "train/loss_x",
                "train/loss_s",
                "train/mask_ratio",
                "train/pseudo_acc",
                "val/unlabeled",
                "val/unlabeled_confidence",
            }
        else:
            assert "val/unlabeled" not in logged["history_keys"]
        assert expected <= logged["history_keys"], expected - logged["history_keys"]


def test_report_reads_the_score_that_selected_best_ckpt(tmp_path):
    """ACDC-style runs: best.ckpt chosen by the mean Dice, whose mIoU is not the best mIoU."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for n, (seed, dice, miou) in enumerate([(0, 70.0, 41.0), (1, 74.0, 39.0)]):
        results = {
            **_results("unimatch", "3", seed, miou),
            "selection": "mean_dice",
            "best_val_score": dice,
        }
        _job(sweep, f"{n}_unimatch", ["method=unimatch", "split=3", f"seed={seed}"], results)
    markdown = report(sweep)
    assert "best val mean Dice (%)" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| unimatch"))
    assert row.split("|")[2].strip() == "72.00 ± 2.83"  # mean 72, sample std sqrt(8)
    by_miou = report(sweep, tmp_path / "miou", metric="best_val_miou")
    assert "best.ckpt's mIoU (%)" in by_miou and "40.00 ± 1.41" in by_miou
