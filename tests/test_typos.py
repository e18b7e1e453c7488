"""A typo on the command line: a wrong group choice fails with Hydra's list of the group's
options (all of them, nothing else); a wrong key fails with Hydra's "not in struct" message and
then one line naming the close keys (or, with none close, every key of its group). Inside a
sweep (`-m`) both answers are the same as a single run's."""

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from semiseg.close_keys import close_keys_line, with_close_keys

sys.path.insert(0, str(Path(__file__).parent))
from cli import REPO, run_script  # noqa: E402

CONF = REPO / "conf"


def _options_listed(stderr: str, group: str) -> list[str]:
    """The names Hydra lists under "Available options in 'GROUP':"."""
    lines = stderr.splitlines()
    start = lines.index(f"Available options in '{group}':") + 1
    listed = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        listed.append(line.strip())
    return listed


@pytest.mark.slow  # a train.py process (about 25 s on 2 busy cores)
def test_a_wrong_choice_lists_every_option_of_its_group(tmp_path):
    proc = run_script("train.py", "method=unimatc", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Could not find 'method/unimatc'" in proc.stderr
    assert _options_listed(proc.stderr, "method") == _yaml_names("method")
    assert "close keys" not in proc.stderr  # a choice, not a key: Hydra's list is the help


def test_a_wrong_dataset_choice_lists_every_dataset():
    with pytest.raises(MissingConfigException) as err:
        _keys_of("train", None, "dataset=pascl")
    assert "Could not find 'dataset/pascl'" in str(err.value)
    assert _options_listed(str(err.value), "dataset") == _yaml_names("dataset")


def _yaml_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.slow  # a train.py process (about 25 s on 2 busy cores)
def test_a_wrong_key_names_its_close_keys_in_one_line(tmp_path):
    proc = run_script("train.py", "trainer.max_stepz=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Key 'max_stepz' is not in struct" in proc.stderr  # Hydra's own message first
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: trainer.max_stepz is not a key of trainer; close keys: trainer.max_steps"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # a train.py process (about 10 s on 2 busy cores)
def test_a_wrong_key_inside_a_sweep_names_its_close_keys_as_a_single_run_does(tmp_path):
    proc = run_script("train.py", "-m", "trainer.max_stepz=3,4", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Key 'max_stepz' is not in struct" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: trainer.max_stepz is not a key of trainer; close keys: trainer.max_steps"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun.yaml"]  # no job ran


@pytest.mark.slow  # a train.py process (about 10 s on 2 busy cores)
def test_a_wrong_choice_inside_a_sweep_lists_every_option_before_any_job_runs(tmp_path):
    proc = run_script("train.py", "-m", "method=unimatch,fixmtch", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Could not find 'method/fixmtch'" in proc.stderr
    assert _options_listed(proc.stderr, "method") == _yaml_names("method")
    assert "close keys" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun.yaml"]  # unimatch did not run


def _keys_of(config: str, group: str, *overrides: str) -> list[str]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=list(overrides))
    return sorted(cfg[group].keys()) if group else sorted(cfg.keys())


@pytest.mark.parametrize(
    ("config", "argv", "expected"),
    [
        ("train", ["seeed=1"], "error: seeed is not a top-level key; close keys: seed"),
        ("train", ["method=fixmatch", "method.tauu=0.5"],
         "error: method.tauu is not a key of method; close keys: method.tau"),
        ("eval", ["eval.moed=x"], "error: eval.moed is not a key of eval; close keys: eval.mode, "
         "eval.model"),
        # Hydra's flags and their values are not overrides
        ("train", ["-m", "-cn", "train", "optim.lrr=0.1"],
         "error: optim.lrr is not a key of optim; close keys: optim.lr"),
        # a sweep: each job is composed; the first with an unknown key names it
        ("train", ["-m", "trainer.max_stepz=3,4"],
         "error: trainer.max_stepz is not a key of trainer; close keys: trainer.max_steps"),
        ("train", ["-m", "seed=range(0,3)", "seeed=1"],
         "error: seeed is not a top-level key; close keys: seed"),
        # an interval (Optuna's) has no values to list: its key is still checked
        ("train", ["-m", "optim.lrr=interval(0.01,0.1)"],
         "error: optim.lrr is not a key of optim; close keys: optim.lr"),
        # method.tau is a key of fixmatch, not of supervised: only a job of one choice fails
        ("train", ["-m", "method=fixmatch,supervised", "method.tau=0.5,0.7"],
         "error: method.tau is not a key of method; its keys: method._target_, "
         "method.labeled_loss, method.name"),
    ],
)  # fmt: skip
def test_close_keys(config, argv, expected):
    assert close_keys_line(CONF, config, argv) == expected


def test_with_no_close_key_every_key_of_the_group_is_listed():
    line = close_keys_line(CONF, "train", ["trainer.zzzz=1"])
    keys = ", ".join(f"trainer.{k}" for k in _keys_of("train", "trainer"))
    assert line == f"error: trainer.zzzz is not a key of trainer; its keys: {keys}"


@pytest.mark.parametrize(
    "argv",
    [
        ["trainer.max_steps=3"],
        ["+trainer.new_key=1"],
        ["method=unimatc"],
        ["-m", "method=unimatch,fixmtch"],
        ["-m", "trainer.max_steps=3,4", "seed=0,1"],
        ["-m", "optim.lr=interval(0.01,0.1)", "seed=0,1"],
    ],
)
def test_no_line_when_no_key_is_unknown(argv):
    # composes (the run failed later), or failed on something else (a choice: Hydra lists it)
    assert close_keys_line(CONF, "train", argv) is None


def test_the_line_follows_hydras_exit_status_1_only(monkeypatch, capsys):
    def hydra_stops(code):
        def main():
            raise SystemExit(code)

        return main

    monkeypatch.setattr(sys, "argv", ["train.py", "optim.lrr=0.1"])
    for code, line in [
        (1, "error: optim.lrr is not a key of optim; close keys: optim.lr\n"),
        (2, ""),
    ]:
        with pytest.raises(SystemExit) as stop:
            with_close_keys(hydra_stops(code), str(REPO / "train.py"), "train")
        assert stop.value.code == code  # the exit status is kept
        assert capsys.readouterr().err == line
