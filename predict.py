"""Label images with a checkpoint: python predict.py ckpt_path=RUN/checkpoints/best.ckpt
input=DIR_OR_FILE output=DIR [tta.flip=true tta.scales=[0.75,1.0,1.25]] [precision=bf16].
ckpt_path may be a file written by export.py: ckpt_path=model.onnx (its model.onnx.json beside it)."""

import hydra
from omegaconf import DictConfig

from semiseg.close_keys import with_close_keys
from semiseg.errors import exit_on_user_error
from semiseg.predict import run


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    with_close_keys(main, __file__, "predict")
