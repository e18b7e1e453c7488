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
