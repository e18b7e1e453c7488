"""Train a semi-supervised segmenter: python train.py method=unimatch dataset=toy split=20."""

import hydra
from omegaconf import DictConfig

from semiseg.errors import exit_on_user_error
from semiseg.runner import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
