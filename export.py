"""Export a checkpoint for inference: python export.py ckpt_path=RUN/checkpoints/best.ckpt
format=onnx|openvino|torchscript [output=FILE] [eval.model=student|teacher]."""

import hydra
from omegaconf import DictConfig

from semiseg.close_keys import with_close_keys
from semiseg.errors import exit_on_user_error
from semiseg.export import run


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    with_close_keys(main, __file__, "export")
