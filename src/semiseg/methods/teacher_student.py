"""What the teacher-student methods share (mean teacher, iMAS, AugSeg): an EMA teacher that makes
the pseudo-labels and is the network evaluated and kept, as in the public iMAS and AugSeg code
(both select their best checkpoint on the teacher's mIoU; `eval.model=student` to override).

The teacher is a frozen copy of the student (methods/teacher.py), updated after every optimizer
step that changed the weights (`after_optimizer_step`), with decay min(1 - 1/(t + 1), alpha) where
t counts this method's own updates (checkpointed, so a resumed run continues the ramp exactly);
parameters and BatchNorm statistics are averaged, as both public codes do.

`ema_warmup`: `epoch` (mean teacher, iMAS, AugSeg: their public train_semi.py) copies the student
into the teacher (decay 0) for every update of the first epoch, the ramp only starting in the
second, already near alpha; `ramp` ramps from the first update (UniMatch V2's rule, kept by the
methods that declare it). A run shorter than an epoch with `epoch` keeps teacher = student.
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
    public_ema_warmup = "epoch"  # the U2PL code base's rule; `ramp` where the public code ramps

    def __init__(
        self,
        *args,
        tau: float = 0.95,
        weight_u: float = 1.0,
        ema_alpha: float = 0.999,
        ema_buffers: bool | str = True,  # true: averaged, false: copied, own: left alone
        ema_warmup: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.tau = tau
        self.weight_u = weight_u
        # Built before Lightning wraps anything in DDP: its parameters never require grad.
        if ema_buffers not in (True, False, "own"):
            raise ConfigError(f"method.ema_buffers={ema_buffers}: choose true, false or own")
        self.teacher = EMATeacher(self.model, ema_alpha, average_buffers=ema_buffers)
        self.ema_updates = 0
        self.ema_warmup = ema_warmup or self.public_ema_warmup
        if self.ema_warmup not in ("epoch", "ramp"):
            raise ConfigError(
                f"method.ema_warmup={ema_warmup}: choose epoch (teacher = student for the first "
                "epoch, the public iMAS/AugSeg/U2PL rule) or ramp"
            )

    def ema_copy_updates(self) -> int:
        """How many first updates copy the student: one epoch's optimizer steps with
        `ema_warmup=epoch` (0 without a Trainer, e.g. the benchmark)."""
        if self.ema_warmup != "epoch" or self._trainer is None:
            return 0
        return int(self.trainer.num_training_batches)

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
        decay = self.teacher.update(self.model, self.ema_updates, self.ema_copy_updates())
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
    same crop (UniMatch's strong view), to measure what the intensity ops themselves bring.

    Crop padding, as the public code by default: the crops are padded with the mean colour
    (`pad_fill=mean`, their `Crop`: ImageNet mean x 255, truncated to 8 bits) and the padded
    unlabeled pixels are trained on their confident pseudo-labels, the loss averaged over every
    pixel (`unlabeled_padding=train`: their datasets keep no padding mask). The option
    `unlabeled_padding=ignore` leaves padded pixels out of the unlabeled loss and of its count
    (UniMatch's rule): on Pascal's padded crops the teacher's labels of the flat padding teach
    nothing about the images, and the loss no longer shrinks with the padded area.
    """

    @classmethod
    def needs_rgb_batches(cls, method_cfg) -> bool:
        return True  # the papers' intensity ops, on RGB batches

    paper_policy: IntensityPolicy

    def __init__(
        self,
        *args,
        strong_view: str = "intensity",
        intensity=None,
        unlabeled_padding: str = "train",
        pad_fill: str = "mean",  # read by data_requirements: the data module pads the crops
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if strong_view not in ("intensity", "workers"):
            raise ConfigError(f"method.strong_view={strong_view}: choose intensity or workers")
        if unlabeled_padding not in ("train", "ignore"):
            raise ConfigError(
                f"method.unlabeled_padding={unlabeled_padding}: choose train (the public code) "
                "or ignore"
            )
        self.strong_source = strong_view
        self.policy = policy_with(self.paper_policy, intensity, "method.intensity")
        self.train_on_padding = unlabeled_padding == "train"

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        workers = method_cfg.get("strong_view", "intensity") == "workers"
        return {
            "unlabeled": True,
            "num_strong": 1 if workers else 0,
            "mix": None,
            "pad_fill": method_cfg.get("pad_fill", "mean"),
        }

    def strong_view(self, u: Unlabeled) -> Tensor:
        if self.strong_source == "workers":
            return u.strong1
        return random_intensity(u.weak, self.policy)

    def loss_ignore(self, ignore: Tensor) -> Tensor:
        """The unlabeled ignore mask the loss sees: none with `unlabeled_padding=train` (the
        public code trains padded pixels), the data module's padding mask otherwise."""
        return torch.zeros_like(ignore) if self.train_on_padding else ignore
