"""Propose the images to label next: python select_images.py ckpt_path=RUN/checkpoints/best.ckpt
budget=N strategy=entropy output=DIR (strategies: random, entropy, margin, disagreement, kcenter).
Writes the next round's split into DIR; see docs/selection.md. (Not select.py: a file of that
name beside train.py would stand in for Python's own `select` module and break every script.)"""

import hydra
from omegaconf import DictConfig

from semiseg.errors import exit_on_user_error
from semiseg.selection.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="select")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
