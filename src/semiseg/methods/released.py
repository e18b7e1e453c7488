"""The networks of a released checkpoint (the authors' public files, checkpoints/released.py),
held so that eval.py validates them with the same code as a training run's: the student under
`model`, the EMA teacher (public UniMatch V2's `model_ema`) under `teacher` where the file has
one. It evaluates only: there is no training step.
"""

from __future__ import annotations

import copy

from semiseg.errors import ConfigError
from semiseg.methods.base import SemiSegModule


class ReleasedNetworks(SemiSegModule):
    uses_unlabeled = False

    def __init__(
        self, *args, with_teacher: bool = False, default_network: str = "student", **kwargs
    ):
        super().__init__(*args, **kwargs)
        if with_teacher:
            self.teacher = copy.deepcopy(self.model)  # its weights come from the file
        self.default_eval_network = default_network

    def networks(self) -> dict[str, str]:
        return {"student": "model", **({"teacher": "teacher"} if hasattr(self, "teacher") else {})}

    def training_losses(self, batch):
        raise ConfigError(
            "a released checkpoint is evaluated, not trained: use it with eval.py, predict.py "
            "or export.py"
        )
