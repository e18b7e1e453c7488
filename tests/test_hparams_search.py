"""Hyperparameter search through hydra-optuna-sweeper: train.py returns the run's
`optimized_metric`, and hparams_search=toy_optuna tunes optim.lr and method.tau on it."""

import json
import math

import pytest
import yaml
from cli import REPO, train_on_toy
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from semiseg.errors import ConfigError
from semiseg.run.fit import check_optimized_metric, optimized_metric


def test_optimized_metric_is_a_results_value():
    cfg = OmegaConf.create({"optimized_metric": "best_val_miou"})
    assert optimized_metric(cfg, {"best_val_miou": 41.5, "val_miou": 40.0}) == 41.5
    assert optimized_metric(cfg, {"best_val_miou": None}) is None  # no validation
    assert optimized_metric(OmegaConf.create({"optimized_metric": None}), {"val_miou": 1}) is None
    check_optimized_metric(OmegaConf.create({"optimized_metric": "val_miou"}))
    with pytest.raises(ConfigError, match="optimized_metric=miou: train.py returns one of"):
        check_optimized_metric(OmegaConf.create({"optimized_metric": "miou"}))


def test_toy_optuna_composes_a_maximising_search_of_lr_and_tau():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=toy_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optim.lr", "method.tau"}
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert cfg.optimized_metric == "best_val_score" and cfg.hydra.mode.name == "MULTIRUN"
    assert "tau" in cfg.method  # the default method (unimatch) has the tuned key
    # the study in a file a re-run continues; a failed trial does not end the search
    assert sweeper._target_.endswith("ContinuedOptunaSweeper") and sweeper.storage is None
    assert sweeper.max_failure_rate == 1.0


@pytest.mark.slow
def test_two_trial_optuna_sweep_receives_each_runs_best_score(tmp_path, toy_root):
    sweep = tmp_path / "search"
    train_on_toy(
        toy_root,
        "hparams_search=toy_optuna",  # a sweep without -m
        "hydra.sweeper.n_trials=2",
        "method=fixmatch",
        f"hydra.sweep.dir={sweep}",
    )
    trials = sorted(sweep.glob("*/results.json"))
    assert len(trials) == 2
    scores, lrs = [], set()
    for path in trials:
        results = json.loads(path.read_text())
        assert results["method"] == "fixmatch" and results["steps"] == 3
        scores.append(results["best_val_score"])
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        values = dict(
            o.split("=", 1) for o in overrides if o.startswith(("optim.lr", "method.tau"))
        )
        assert 0.003 <= float(values["optim.lr"]) <= 0.1
        assert 0.8 <= float(values["method.tau"]) <= 0.99
        lrs.add(values["optim.lr"])
    assert len(lrs) == 2  # two different proposals
    assert all(math.isfinite(s) for s in scores)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {"optim.lr", "method.tau"}
    assert best["best_value"] == pytest.approx(max(scores))


DIVERGING = "1e+30"  # optim.lr: the first SGD step makes the weights overflow, the next loss NaN


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_as_failed_and_a_rerun_continues_the_study(
    tmp_path, toy_root
):
    sweep = tmp_path / "search"
    search = [
        "-m",  # a sweep over the command line's choice(...)
        "hparams_search=toy_optuna",
        f"optim.lr=choice({DIVERGING},0.01)",
        "method.tau=0.95",
        "method=fixmatch",
        "optim.max_nonfinite_steps=2",  # two NaN losses in a row end the diverging trial
        "hydra.sweeper.sampler.seed=10",  # its first proposals: the diverging lr, then 0.01
        f"hydra.sweep.dir={sweep}",
    ]
    first = train_on_toy(toy_root, *search, "hydra.sweeper.n_trials=2")
    assert "non-finite losses or gradients in a row" in first.stdout + first.stderr
    study = json.loads((sweep / "optuna_study.json").read_text())["studies"][0]
    trials = [(t["state"], t["params"]["optim.lr"]) for t in study["trials"]]
    assert trials == [("FAIL", 1e30), ("COMPLETE", 0.01)]  # the search went on after the failure
    finished = sweep / "1_fixmatch_toy_20_s0" / "results.json"
    score = json.loads(finished.read_text())["best_val_score"]
    assert study["trials"][1]["values"] == [pytest.approx(score)]
    assert not (sweep / "0_fixmatch_toy_20_s0" / "results.json").exists()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"] == {"optim.lr": 0.01}

    # The same command with n_trials=3: the stored two count, one more runs, in a new folder.
    before = finished.read_bytes()
    second = train_on_toy(toy_root, *search, "hydra.sweeper.n_trials=3")
    assert "2 trials recorded (1 complete), 1 to run" in second.stdout + second.stderr
    study = json.loads((sweep / "optuna_study.json").read_text())["studies"][0]
    assert [t["number"] for t in study["trials"]] == [0, 1, 2]
    assert [t["state"] for t in study["trials"]][:2] == ["FAIL", "COMPLETE"]
    assert study["trials"][2]["state"] in ("FAIL", "COMPLETE")
    assert len(list(sweep.glob("2_fixmatch_toy_20_s0"))) == 1
    assert finished.read_bytes() == before  # the earlier trial's folder is left as it was
