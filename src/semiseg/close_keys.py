"""The close keys of a mistyped override.

A wrong group choice (`method=unimatc`) fails in Hydra with the list of valid options; a wrong
key (`trainer.max_stepz=3`) fails with "Key 'max_stepz' is not in struct" and no list. Hydra
prints that message and exits with status 1 before the script's own code runs, so the scripts
run their Hydra main through `with_close_keys`: on exit status 1 it composes the same overrides
again with Hydra's compose API (which raises instead of printing), and where the cause is an
unknown key it adds one line naming the keys of the same group that are close to it. In a sweep
(`-m trainer.max_stepz=3,4`) the compose API takes one job's overrides, not the sweep, so the
sweep is expanded into its jobs and the first job with an unknown key gives the line: a sweep
says what a single run says.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# Command-line flags of Hydra's own that take a value in the next argument.
_FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir"}
# The jobs of a sweep composed at most: a typo is in every job or in the few of one choice.
_MOST_JOBS = 64


def with_close_keys(main: Callable[[], object], script: str, config_name: str) -> None:
    """Run `main`, the @hydra.main function of `script` (its configs in conf/ beside it); when
    it exits with status 1, add the close-keys line if an override names no existing key."""
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1:
            line = close_keys_line(Path(script).parent / "conf", config_name, sys.argv[1:])
            if line:
                print(line, file=sys.stderr)
        raise


def close_keys_line(config_dir: Path, config_name: str, argv: list[str]) -> str | None:
    """'error: KEY is not a key of GROUP; close keys: ...' for the first unknown key of the
    overrides in argv (of the first such job where argv is a sweep), or None when they compose
    (the failure was something else)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _FLAGS_WITH_VALUE
            continue
        overrides.append(arg)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            for job in itertools.islice(_sweep_jobs(overrides), _MOST_JOBS):
                line = _unknown_key_line(config_name, job)
                if line:
                    return line
    except Exception:  # noqa: BLE001 (a diagnosis only: Hydra has already reported the error)
        return None
    finally:
        GlobalHydra.instance().clear()
    return None


def _sweep_jobs(overrides: list[str]) -> Iterator[list[str]]:
    """The overrides of each job of a sweep (`a=1,2 b=x`: `[a=1, b=x]`, `[a=2, b=x]`); one job
    when nothing sweeps. A sweep that cannot be listed (Optuna's `interval(...)`) is composed
    with the value null: only its key is checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 (an interval: no values to list)
            values = ["null"]
        choices.append([f"{key}={v}" for v in values])
    for job in itertools.product(*choices):
        yield list(job)


def _unknown_key_line(config_name: str, overrides: list[str]) -> str | None:
    from hydra import compose
    from hydra.errors import ConfigCompositionException
    from omegaconf import DictConfig

    try:
        compose(config_name=config_name, overrides=overrides)
    except ConfigCompositionException as err:
        cause = err.__cause__
        parent = getattr(cause, "parent_node", None)
        full_key = getattr(cause, "full_key", None)
        if "not in struct" not in str(cause) or not isinstance(parent, DictConfig) or not full_key:
            return None
        return _line(str(full_key), [str(k) for k in parent.keys()])
    except Exception:  # noqa: BLE001 (another failure, e.g. a wrong choice: Hydra lists it)
        return None
    return None


def _line(full_key: str, siblings: list[str]) -> str:
    group, _, key = full_key.rpartition(".")
    prefix = f"{group}." if group else ""
    close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.6)
    where = f"a key of {group}" if group else "a top-level key"
    if close:
        names = ", ".join(prefix + c for c in close)
        return f"error: {full_key} is not {where}; close keys: {names}"
    names = ", ".join(prefix + s for s in sorted(siblings))
    return f"error: {full_key} is not {where}; its keys: {names}"
