"""Evaluate a checkpoint: python eval.py ckpt_path=RUN/checkpoints/best.ckpt [save_predictions=true]."""

import hydra
from omegaconf import DictConfig

from semiseg.close_keys import with_close_keys
from semiseg.errors import exit_on_user_error
from semiseg.run.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    with_close_keys(main, __file__, "eval")
