"""Train a semi-supervised segmenter: python train.py method=unimatch dataset=toy split=20.

Multi-GPU: torchrun --nproc_per_node=N train.py trainer=ddp ...  (see README, "Multi-GPU").
Sweeps:    python train.py -m method=supervised,unimatch split=10,20 seed=0,1,2
Tuning:    python train.py hparams_search=toy_optuna  (returns `optimized_metric` to the sweeper)
SLURM:     python train.py -m hydra/launcher=slurm ...  (see README, "SLURM")
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from semiseg.close_keys import with_close_keys
from semiseg.errors import exit_on_user_error
from semiseg.run.fit import optimized_metric, train


class JobFailed(RuntimeError):
    """A sweep job that stopped on a configuration error (already printed in one line)."""


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train one run; return its `optimized_metric` (a results.json key) for Hydra sweepers."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return optimized_metric(cfg, exit_on_user_error(train)(cfg))
    # In a sweep a failed job must not end the sweep: Hydra records the exception, runs the
    # remaining jobs and reports the first failure at the end; the job's folder has no
    # results.json, which `python -m semiseg.tools.report` shows as "failed".
    try:
        return optimized_metric(cfg, exit_on_user_error(train)(cfg))
    except SystemExit as stop:
        if stop.code != 2:  # e.g. 143 after SIGTERM: the whole sweep stops (resume=auto)
            raise
        raise JobFailed("a configuration error, printed above") from None


if __name__ == "__main__":
    with_close_keys(main, __file__, "train")
