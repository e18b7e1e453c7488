"""semiseg's sweeper for hparams_search=...: Hydra finds sweepers only in the hydra_plugins
package, so the class is here and its code in semiseg.run.search. Defined only when
hydra-optuna-sweeper is installed (pip install -e '.[tune]')."""

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hparams_search=... needs it; nothing else does
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ContinuedOptunaSweeper(OptunaSweeper):
        """OptunaSweeper whose study lives in the sweep folder and continues on a re-run."""

        def setup(self, *, hydra_context, task_function, config) -> None:
            # imported here: Hydra imports this module at every start, optuna only a search needs
            from semiseg.run.search import use_study_file

            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            use_study_file(self.sweeper, config.hydra.sweep.dir)

        def sweep(self, arguments: list[str]) -> None:
            from semiseg.run.search import continue_study

            continue_study(self.sweeper)
            try:
                return self.sweeper.sweep(arguments)
            except ValueError as err:  # optuna's best_trial without any complete trial
                if "No trials are completed" not in str(err):
                    raise
                raise SystemExit(
                    "error: no trial of the search finished (each trial's folder says why); "
                    "fix the cause and run the same command again to continue the study"
                ) from None
