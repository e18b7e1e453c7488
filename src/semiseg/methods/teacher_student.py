"""What the teacher-student methods share (mean teacher, iMAS, AugSeg): an EMA teacher that makes
the pseudo-labels and is the network evaluated and kept, as in the public iMAS and AugSeg code
(both select their best checkpoint on the teacher's mIoU; `eval.model=student` to override).

The teacher is a frozen copy of the student (methods/teacher.py), updated after every optimizer
step that changed the weights (`after_optimizer_step`), with decay min(1 - 1/(t + 1), alpha) where
t counts this method's own updates (checkpointed, so a resumed run continues the ramp exactly);
parameters and BatchNorm statistics are averaged, as both public codes do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from semiseg.augment.intensity import IntensityPolicy, policy_with, random_intensity
from semiseg.data.batch import Unlabeled
from semiseg.errors import ConfigError
from semiseg.methods.base import SemiSegModule
from semiseg.methods.losses import pseudo_labels
from semiseg.methods.teacher import EMATeacher


class TeacherStudentModule(SemiSegModule):
    uses_unlabeled = True
    num_strong_views = 0  # views made by the data workers; iMAS and AugSeg make theirs in the step
    default_eval_network = "teacher"

    def __init__(
        self,
        *args,
        tau: float = 0.95,
        weight_u: float = 1.0,
        ema_alpha: float = 0.999,
        ema_buffers: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.tau = tau
        self.weight_u = weight_u
        # Built before Lightning wraps anything in DDP: its parameters never require grad.
        self.teacher = EMATeacher(self.model, ema_alpha, average_buffers=ema_buffers)
        self.ema_updates = 0

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        return {"unlabeled": True, "num_strong": cls.num_strong_views, "mix": None}

    def networks(self) -> dict[str, str]:
        return {"student": "model", "teacher": "teacher.network"}

    disagreement_views = "teacher against student"

    @torch.no_grad()
    def prediction_pair(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.teacher(image), self.model(image)

    def after_optimizer_step(self) -> None:
        decay = self.teacher.update(self.model, self.ema_updates)
        self.ema_updates += 1
        if self._trainer is not None:  # make bench runs the step without a Trainer
            self.log("train/ema_decay", decay, on_step=True, on_epoch=False, batch_size=1)

    @torch.no_grad()
    def teacher_pseudo_labels(self, weak: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(conf, labels, logits) of the teacher on the weak view, in eval mode."""
        logits = self.teacher(weak)
        conf, labels = pseudo_labels(logits)
        return conf, labels, logits

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["semiseg"]["ema_updates"] = self.ema_updates

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.ema_updates = int(checkpoint.get("semiseg", {}).get("ema_updates", 0))


class IntensityAugmented(TeacherStudentModule):
    """iMAS and AugSeg: the strong view is the weak view after random intensity ops, made in the
    step (the public code; `intensity:` overrides the paper's ops, their number and the enhance
    range), or `strong_view=workers`: the data workers' colour jitter, grayscale and blur of the
    same crop (UniMatch's strong view), to measure what the intensity ops themselves bring."""

    @classmethod
    def needs_rgb_batches(cls, method_cfg) -> bool:
        return True  # the papers' intensity ops, on RGB batches

    paper_policy: IntensityPolicy

    def __init__(self, *args, strong_view: str = "intensity", intensity=None, **kwargs):
        super().__init__(*args, **kwargs)
        if strong_view not in ("intensity", "workers"):
            raise ConfigError(f"method.strong_view={strong_view}: choose intensity or workers")
        self.strong_source = strong_view
        self.policy = policy_with(self.paper_policy, intensity, "method.intensity")

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        workers = method_cfg.get("strong_view", "intensity") == "workers"
        return {"unlabeled": True, "num_strong": 1 if workers else 0, "mix": None}

    def strong_view(self, u: Unlabeled) -> Tensor:
        if self.strong_source == "workers":
            return u.strong1
        return random_intensity(u.weak, self.policy)
