"""The hyperparameter search's sweeper (hydra_plugins/semiseg_search): hydra-optuna-sweeper's,
with the study kept in a file.

The stock sweeper keeps the study in memory (storage: null) and stops the whole search at the
first failed trial (max_failure_rate: 0). `hparams_search=toy_optuna` instead keeps the study in
`<sweep dir>/optuna_study.json` and records a failed trial (a diverging lr that ends in
`optim.max_nonfinite_steps` NaN losses, say) as failed while the search goes on.

Re-running the same command on the same `hydra.sweep.dir` continues the study: the trials it
holds count towards `n_trials` (only the rest are run), their job numbers are not reused (each
trial keeps its own folder), the sampler sees every earlier score, and a trial left running when
the search was killed is recorded as failed.

Why a JSON file and not Optuna's SQLite storage: the Optuna that hydra-optuna-sweeper allows
(< 3) cannot open an SQLite study with SQLAlchemy 2 (an assertion in its schema check), and a
JSON file, unlike a pickle, runs no code when read.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

STUDY_FILE = "optuna_study.json"

# The storage methods that change a study: each is followed by writing the file.
_WRITES = (
    "create_new_study",
    "delete_study",
    "set_study_directions",
    "set_study_user_attr",
    "set_study_system_attr",
    "create_new_trial",
    "set_trial_state",
    "set_trial_param",
    "set_trial_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
)


class StudyFile(InMemoryStorage):
    """Optuna's in-memory storage, written to a JSON file (atomically) after every change and
    read back from it when the file exists."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path).absolute()
        self._loading = True
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                for study in saved["studies"]:
                    self._load_study(study)
            except (ValueError, KeyError, TypeError) as err:
                raise SystemExit(
                    f"error: cannot read the search's study {self.path}: {err!r}; move it aside "
                    "to start the search afresh"
                ) from None
        self._loading = False

    def __str__(self) -> str:
        return str(self.path)

    def _load_study(self, study: dict) -> None:
        study_id = super().create_new_study(study["name"])
        directions = [StudyDirection[d] for d in study["directions"]]
        super().set_study_directions(study_id, directions)
        for key, value in study["user_attrs"].items():
            super().set_study_user_attr(study_id, key, value)
        for key, value in study["system_attrs"].items():
            super().set_study_system_attr(study_id, key, value)
        for trial in study["trials"]:
            super().create_new_trial(study_id, template_trial=_trial_from_json(trial))

    def save(self) -> None:
        if self._loading:
            return
        studies = [
            {
                "name": self.get_study_name_from_id(study_id),
                "directions": [d.name for d in self.get_study_directions(study_id)],
                "user_attrs": self.get_study_user_attrs(study_id),
                "system_attrs": self.get_study_system_attrs(study_id),
                "trials": [_trial_to_json(t) for t in self.get_all_trials(study_id)],
            }
            for study_id in sorted(self._studies)
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(partial, "w") as out:
            json.dump({"studies": studies}, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.path)  # a kill leaves the previous whole file


def _written(name: str):
    method = getattr(InMemoryStorage, name)

    def write_after(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        self.save()
        return result

    write_after.__name__ = name
    return write_after


for _name in _WRITES:
    setattr(StudyFile, _name, _written(_name))


def _time(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _trial_to_json(trial: FrozenTrial) -> dict:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": trial.values,
        "datetime_start": _time(trial.datetime_start),
        "datetime_complete": _time(trial.datetime_complete),
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "user_attrs": trial.user_attrs,
        "system_attrs": trial.system_attrs,
        "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
    }


def _trial_from_json(saved: dict) -> FrozenTrial:
    def when(value):
        return datetime.datetime.fromisoformat(value) if value else None

    return FrozenTrial(
        number=saved["number"],
        state=TrialState[saved["state"]],
        value=None,
        values=saved["values"],
        datetime_start=when(saved["datetime_start"]),
        datetime_complete=when(saved["datetime_complete"]),
        params=saved["params"],
        distributions={k: json_to_distribution(d) for k, d in saved["distributions"].items()},
        user_attrs=saved["user_attrs"],
        system_attrs=saved["system_attrs"],
        intermediate_values={int(k): v for k, v in saved["intermediate_values"].items()},
        trial_id=-1,  # given by the storage
    )


def use_study_file(impl, sweep_dir) -> None:
    """Give the sweeper (OptunaSweeperImpl, after its setup) its study file in the sweep folder,
    unless the config names another Optuna storage."""
    if impl.storage is None:
        impl.storage = StudyFile(Path(sweep_dir) / STUDY_FILE)


def continue_study(impl) -> None:
    """Before the sweep: count the trials a stored study holds against n_trials, give the new
    trials job numbers (folders) after them, and record a trial left running as failed."""
    import optuna

    try:
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
    except KeyError:  # a new study: the sweeper creates it
        return
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            # killed with the search (SIGTERM, a lost node): its run never reported a value
            study.tell(trial.number, state=TrialState.FAIL)
    done = len(trials)
    remaining = max(0, impl.n_trials - done)
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    print(
        f"continuing the study {impl.study_name} of {impl.storage}: {done} trials recorded "
        f"({complete} complete), {remaining} to run",
        flush=True,
    )
    impl.n_trials = remaining
    impl.job_idx = done  # new trials get new folders; the earlier ones stay as they are
    if remaining and hasattr(impl.sampler, "reseed_rng"):
        impl.sampler.reseed_rng()  # not the seed's first proposals once more
