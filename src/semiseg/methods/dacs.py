"""DACS with DAFormer's additions, the domain-adaptation objective FST's UDA code trains
(mmseg/models/uda/dacs.py and fst_d.py, `forward_train`): the labeled stream is the source domain,
the unlabeled stream the target domain (`source=`, e.g. `dataset=cityscapes source=gta5`).

One step (`training_losses`):
1. the student learns the source images (cross-entropy, mmseg's mean over ALL pixels, ignored
   ones counting as 0);
2. the ImageNet feature distance: the L2 distance, per position, between the student's last
   encoder feature and that of a frozen copy of the initial (ImageNet) network, averaged over the
   positions whose source label, downscaled to the feature's grid, is a thing class (at least
   75% of the cell), times lambda (0.005);
3. the EMA teacher labels the target images: in train mode (its BatchNorm uses the batch and
   updates its own statistics) with dropout and DropPath off, argmax of the softmax;
4. the pseudo-label weight: the share of target pixels in the batch with confidence >= 0.968,
   one number for all of them; rows at the top and bottom of the crop get weight 0 (the
   pseudo-label crop, 15 and 120 rows of a 512 crop; scaled to other crop heights);
5. ClassMix (augment/class_mix.py): half the source batch's classes pasted onto each target
   image, labels (source ground truth / pseudo-labels) and weights (1 / the quality weight)
   alike, then colour jitter and blur of the mixed images;
6. the student learns the mixed images: per-pixel weighted cross-entropy, mean over all pixels.

The teacher (`iteration`): `ema_updates` counts the student's forwards, as the public
`local_iter` does. At the first iteration the teacher's parameters become the student's; at
every later one, before the forward, one EMA update with decay min(1 - 1/(t + 1), alpha), t the
forwards so far, on the parameters only (the teacher's BatchNorm statistics are its own). This
class is `method.k=0` of `fst_uda` (DAFormer's baseline); fst_uda.py adds the look-ahead.
Padded target pixels (the data module's ignore mask; the public crops have none) get weight 0.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg.augment.class_mix import blur_images, color_jitter_images, mix, source_class_masks
from semiseg.data.batch import TrainBatch
from semiseg.errors import ConfigError
from semiseg.methods.losses import IGNORE_INDEX
from semiseg.methods.teacher_student import TeacherStudentModule

# Cityscapes' thing classes (traffic light, sign, person, rider, car, truck, bus, train,
# motorcycle, bicycle), the public `imnet_feature_dist_classes`.
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def weighted_ce(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """mmseg's cross-entropy: per pixel (ignored: 0), times `weight`, mean over all pixels."""
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    return (loss if weight is None else loss * weight).mean()


def quality_weight(conf: Tensor, threshold: float) -> Tensor:
    """The share of pixels (of the whole batch) whose confidence is >= threshold, a scalar."""
    return (conf >= threshold).float().mean()


def crop_rows(weight: Tensor, top: int, bottom: int) -> Tensor:
    """`weight` (N, H, W) with its first `top` and last `bottom` rows set to 0."""
    weight = weight.clone()
    if top > 0:
        weight[:, :top] = 0
    if bottom > 0:
        weight[:, -bottom:] = 0
    return weight


def downscale_labels(labels: Tensor, factor: int, min_ratio: float, num_classes: int) -> Tensor:
    """(N, H, W) -> (N, H // factor, W // factor): each cell's majority label (ignore counted as
    a class of its own), or 255 where it covers under `min_ratio` of the cell (the public
    `downscale_label_ratio`)."""
    keys = labels.masked_fill(labels == IGNORE_INDEX, num_classes)
    one_hot = F.one_hot(keys, num_classes + 1).permute(0, 3, 1, 2).float()
    share, out = F.avg_pool2d(one_hot, factor).max(1)
    out = out.masked_fill(out == num_classes, IGNORE_INDEX)
    return out.masked_fill(share < min_ratio, IGNORE_INDEX)


def feature_distance(
    student: Tensor, imagenet: Tensor, labels: Tensor, classes, min_ratio: float, num_classes: int
) -> Tensor:
    """Mean L2 distance (over channels) between two (N, C, h, w) features at the positions whose
    downscaled label is one of `classes`; 0 where there is none (the public mean would be NaN)."""
    factor = labels.shape[-1] // student.shape[-1]
    small = downscale_labels(labels, factor, min_ratio, num_classes)
    mask = torch.isin(small, torch.as_tensor(classes, device=small.device))
    distance = torch.norm(student - imagenet, dim=1, p=2)
    return distance[mask].mean() if mask.any() else student.sum() * 0.0


@contextmanager
def last_output(module: nn.Module):
    """Records the last element of `module`'s output (an encoder's deepest feature) in a list."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out[-1]))
    try:
        yield seen
    finally:
        handle.remove()


class DACS(TeacherStudentModule):
    num_strong_views = 0  # the target images as loaded; mixing, jitter and blur in the step

    def __init__(
        self,
        *args,
        pseudo_threshold: float = 0.968,
        pseudo_crop: tuple[int, int] = (15, 120),
        pseudo_crop_at: int = 512,
        fdist_lambda: float = 0.005,
        fdist_classes=THING_CLASSES,
        fdist_min_ratio: float = 0.75,
        color_jitter_strength: float = 0.2,
        color_jitter_p: float = 0.2,
        blur: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if len(pseudo_crop) != 2 or min(pseudo_crop) < 0:
            raise ConfigError(f"method.pseudo_crop={list(pseudo_crop)}: [top, bottom] rows >= 0")
        bad = [c for c in (fdist_classes or ()) if not 0 <= int(c) < self.num_classes]
        if bad:
            raise ConfigError(
                f"method.fdist_classes: {bad} are not class indices of this dataset "
                f"(0..{self.num_classes - 1}); give its thing classes, or fdist_lambda=0"
            )
        self.pseudo_threshold = pseudo_threshold
        self.pseudo_crop, self.pseudo_crop_at = tuple(int(r) for r in pseudo_crop), pseudo_crop_at
        self.fdist_lambda, self.fdist_min_ratio = fdist_lambda, fdist_min_ratio
        self.fdist_classes = [int(c) for c in (fdist_classes or ())]
        self.jitter_s, self.jitter_p, self.blur = color_jitter_strength, color_jitter_p, blur
        # The frozen ImageNet network: the student as built (its pretrained weights). Not a
        # submodule: it is not trained, checkpointed or evaluated.
        self._imagenet = [copy.deepcopy(self.model).requires_grad_(False).eval()]
        self.last_decay = 0.0

    @classmethod
    def needs_rgb_batches(cls, method_cfg) -> bool:
        return True  # the colour jitter works on the ImageNet-normalised RGB images

    # ------------------------------------------------------------------ the loss of one step
    def training_losses(self, batch: TrainBatch) -> dict[str, Tensor]:
        x, y = batch.labeled.image, batch.labeled.mask
        u = batch.unlabeled
        target, padded = u.weak, u.ignore == IGNORE_INDEX

        # 1. The source images, the student's deepest encoder feature recorded on the way.
        with last_output(self.model.backbone) as features:
            loss_source = weighted_ce(self.model(x), y)

        # 2. The ImageNet feature distance on the source's thing classes.
        loss_fd = torch.zeros((), device=x.device)
        if self.fdist_lambda > 0 and self.fdist_classes:
            imagenet = self._imagenet_features(x)
            loss_fd = self.fdist_lambda * feature_distance(
                features[0], imagenet, y, self.fdist_classes, self.fdist_min_ratio,
                self.num_classes,
            )  # fmt: skip

        # 3. The teacher's pseudo-labels of the target images.
        conf, labels = self.teacher_train_mode(target).softmax(1).max(1)

        # 4. Their weight: the batch's share of confident pixels, the crop's rows at 0.
        weight = quality_weight(conf, self.pseudo_threshold).expand_as(conf)
        weight = crop_rows(weight, *self.crop_rows(conf.shape[-2])).masked_fill(padded, 0.0)

        # 5. ClassMix: source classes onto the target, then colour jitter and blur.
        mask = source_class_masks(y)
        images = mix(mask, x, target)
        if float(torch.rand(())) > self.jitter_p:
            images = color_jitter_images(images, self.jitter_s)
        if self.blur and float(torch.rand(())) > 0.5:
            images = blur_images(images)
        mixed_labels = mix(mask, y, labels)
        mixed_weight = mix(mask, torch.ones_like(weight), weight)

        # 6. The student on the mixed images.
        loss_mix = weighted_ce(self.model(images), mixed_labels, mixed_weight)
        return {
            "loss": loss_source + loss_fd + loss_mix,
            "loss_x": loss_source,
            "loss_fd": loss_fd,
            "loss_u": loss_mix,
            "pseudo_weight": weight.amax(),
        }

    def crop_rows(self, height: int) -> tuple[int, int]:
        """The pseudo-label crop's (top, bottom) rows, scaled from a `pseudo_crop_at` crop."""
        return tuple(round(r * height / self.pseudo_crop_at) for r in self.pseudo_crop)

    @torch.no_grad()
    def _imagenet_features(self, images: Tensor) -> Tensor:
        network = self._imagenet[0].to(images.device)
        with last_output(network.backbone) as features:
            network(images)
        return features[0]

    @torch.no_grad()
    def teacher_train_mode(self, images: Tensor) -> Tensor:
        """The teacher's logits in train mode, dropout and DropPath off (the public teacher)."""
        network = self.teacher.network
        network.train()
        for m in network.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath":
                m.eval()
        try:
            return network(images)
        finally:
            network.eval()

    # ------------------------------------------------------------------ the teacher
    @torch.no_grad()
    def teacher_before_forward(self) -> None:
        """The teacher before each student forward: the student's copy at the first, then one
        EMA update of the parameters with t = the forwards so far (the public `local_iter`)."""
        teacher, student = self.teacher.network.parameters(), self.model.parameters()
        if self.ema_updates == 0:
            for t, s in zip(teacher, student, strict=True):
                t.copy_(s)
            return
        self.ema_parameters(self.ema_updates)

    @torch.no_grad()
    def ema_parameters(self, t: int, source: nn.Module | None = None) -> None:
        """teacher = d * teacher + (1 - d) * source (the student), d = min(1 - 1/(t+1), alpha)."""
        self.last_decay = min(1.0 - 1.0 / (t + 1), self.teacher.alpha)
        source = self.model if source is None else source
        for p, s in zip(self.teacher.network.parameters(), source.parameters(), strict=True):
            p.mul_(self.last_decay).add_(s.detach(), alpha=1.0 - self.last_decay)

    def training_step(self, batch, batch_idx: int) -> None:
        batch = TrainBatch.parse(batch)
        self.teacher_before_forward()
        losses = self.training_losses(batch)
        self.ema_updates += 1  # a forward taken
        if self.optimizer_step_with(losses["loss"]):
            self.log_train({**losses, "ema_decay": self.last_decay}, len(batch.labeled))

    def after_optimizer_step(self) -> None:
        """The teacher moves before the forwards (teacher_before_forward), not after a step."""
