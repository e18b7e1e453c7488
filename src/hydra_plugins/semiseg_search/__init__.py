"""semiseg's Hydra plugins (optuna_study: the hyperparameter search's sweeper)."""
