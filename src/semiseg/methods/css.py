"""CSS (Wang et al., ICCV 2023): collaborative supervision from the logit and the representation
space, on ReCo's contrastive learning. Transcribed from the public code (`Model_cross`,
`Model_mix` in generalframeworks/networks/ddp_model.py, cross_label.py, mix_label.py and the
losses in generalframeworks/loss/loss.py); the pure functions are in methods/contrastive.py.

The EMA teacher labels the weak view twice: by its logits, and by its representation's cosine
similarity to class prototypes (softmax at T_r). `label_mode=cross` learns the representation
labels, each image weighted by its fraction of confident representation pixels (>= tau 0.97);
`mix` learns the logit labels where the two spaces agree, weighted by the logit confidence.
A ReCo contrastive loss (hard anchors: prototype softmax < 0.8) pulls the student's
representations to their class prototypes, weighted exp(-5 (e / 200)^2) over labeled epochs.
`loss = loss_x + weight_u * loss_u + omega * loss_contrast`.

Where this follows the public code, beyond the first reading:
- T_r is `rep_temperature` (0.1, `Model_cross`'s default); the scripts pass their contrastive
  temperature 0.5 as T_r, where no pixel can reach 0.97 (contrastive.representation_pseudo_labels)
  and the `cross` unsupervised loss is always 0. Set rep_temperature=0.5 for the scripts' runs.
- The indicator of hard anchors is the STUDENT's representation against the prototypes before
  this step's update, at T_r; the positives are the prototypes after it.
- Prototypes: EMA (0.99) of the class means of the student's detached representations, labeled
  pixels by their ground truth and unlabeled ones by the teacher's logit labels where confident
  (>= 0.7). Sums and counts are all-reduced, so every rank holds the same prototypes (the public
  code updates a class only on the ranks whose own batch shows it, so its ranks drift apart).
  They are a buffer of this module, outside the networks: checkpointed, never broadcast with
  the validated network's buffers, and changed only by a step that was taken.
- The contrastive weight steps once per public epoch, one pass over the LABELED list (their
  loop runs over the labeled loader), and is 0 after 200 of them: with 92 labels on 4 GPUs x 8
  that is after 400 of 80,000 iterations. `rampdown_epochs=null` spreads it over all training.
- In `mix` mode the public contrastive labels one-hot the disagreeing pixels' -1 as class 0
  (`label_onehot` clamps with relu); here those pixels are left out of the contrastive loss.

The teacher as public: `teacher_mode=train` labels with the batch's own BatchNorm statistics (its
running ones move with its forwards) and `ema_buffers=own` averages parameters only;
`teacher_mode=eval` with `ema_buffers=true` is the family's eval-mode teacher with averaged
statistics.

The model and optimizer of the public code are settings of the CSS experiments: one 3x3 conv
before the classifier (`model.decoder_convs=1`), Nesterov SGD (`optim.nesterov`) and the poly
rate floored at 1e-4 (`optim.min_lr`).

The unlabeled images as public (`unlabeled_aug=public`, augment/reco.py): the teacher labels the
weak crop, then each image and both spaces' labels are rescaled (`unlabeled_scale`) and re-cropped,
mixed, and the mixed images get ReCo's jitter, blur and flip. `unlabeled_aug=strong_view` mixes
the data workers' strong view (colour jitter, grayscale, blur) instead; a model of image pairs or
of other channel counts takes it always (ReCo's jitter is defined on RGB), decided when the module
is built and said once.

The mix as public (`mix_gather=true`, `generate_cut_gather_3`): the unlabeled batch of all ranks
is gathered, image i is mixed with image (i + 1) mod n, n ONE rank's batch, and each rank keeps
its rows; so every rank's image k takes its partner from rank 0's image k + 1 (on one process:
image i + 1 of the batch). `mix_gather=false` mixes within each rank's batch, every image a
partner once, without the all-gather.

The labeled images as public (`labeled_aug=public`, data/reco_labeled.py, in the data workers):
the dataset's `transform`: rescale by s ~ U(`labeled_scale`) (0.5-1.5 VOC, 1.0 Cityscapes),
reflection padding (mask 255), crop, then jitter, blur and flip as the unlabeled images, with
the public generators and draw order. `labeled_aug=unimatch` gives the labeled stream of the
other methods (UniMatch's resize, crop and flip), for comparisons on the same labeled crops.

The weak unlabeled crop as public (`unlabeled_crop=public`, data/reco_labeled.py): the image at
its size, padded by reflection where smaller than the crop (image content, labelled and
trained), cropped, not flipped; `unlabeled_crop=unimatch` is UniMatch's resize, crop (padding
ignored) and flip.

Where this differs (docs/methods.md's CSS table says so too): ClassMix draws the classes of the
partner image (the public draws image i's own, the same pairs seen from the other side on one
rank); confidences are not rounded to 8 bits (the public PIL round trip floors them to k/255, so
its 0.97 threshold acts as 248/255 = 0.9725).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from semiseg.augment.mixing import Mixed
from semiseg.augment.reco import (
    mix_across_ranks,
    mix_within_batch,
    reco_jitter,
    rescale_and_crop,
)
from semiseg.data.batch import TrainBatch
from semiseg.data.checks import note_once
from semiseg.errors import ConfigError
from semiseg.methods.contrastive import (
    class_sums,
    confident_fraction,
    contrastive_loss,
    nearest,
    prototype_similarity,
    rampdown,
    representation_pseudo_labels,
    update_prototypes,
    weighted_pseudo_label_loss,
)
from semiseg.methods.losses import IGNORE_INDEX, mask_ratio, pseudo_label_accuracy, pseudo_labels
from semiseg.methods.teacher_student import TeacherStudentModule
from semiseg.models.deeplabv3plus import upsample

BOTH = ("logits", "representation")
# method.labeled_aug / method.unlabeled_crop -> the data module's crops
LABELED_AUGS = {"public": "reco", "unimatch": "unimatch"}


def rgb_inputs(model) -> bool:
    """Whether the model takes RGB images: not image pairs, not another number of channels."""
    inputs = getattr(model, "inputs", ("rgb",))
    return "pair" not in inputs and getattr(model, "in_channels", 3) == 3


def check_labeled_aug(value: str, key: str = "method.labeled_aug") -> str:
    """method.labeled_aug / method.unlabeled_crop -> the data module's name of the crops."""
    if value not in LABELED_AUGS:
        public = (
            "ReCo's rescale, reflection padding, crop, jitter, blur and flip"
            if key == "method.labeled_aug"
            else "the public plain crop with reflection padding"
        )
        raise ConfigError(
            f"{key}={value!r}: use public ({public}) or unimatch (UniMatch's resize, crop and flip)"
        )
    return LABELED_AUGS[value]


class CSS(TeacherStudentModule):
    public_ema_warmup = "ramp"  # its teacher ramps from the first update (see docstring)
    num_strong_views = 1  # the data workers' strong view of each unlabeled image
    needs_decoder_features = True  # the representation head sits on DeepLabV3+'s decoder

    def __init__(
        self,
        *args,
        label_mode: str = "cross",
        representation_dim: int = 256,
        rep_temperature: float = 0.1,
        weak_threshold: float = 0.7,
        strong_threshold: float = 0.8,
        contrast_temperature: float = 0.5,
        num_queries: int = 256,
        num_negatives: int = 512,
        prototype_alpha: float = 0.99,
        rampdown_epochs: float | None = 200,
        mix_mode: str = "cutmix",
        teacher_mode: str = "train",
        unlabeled_aug: str = "public",
        unlabeled_scale: tuple[float, float] = (0.5, 1.5),
        mix_gather: bool = True,
        # read by data_requirements: the data workers' labeled crops
        labeled_aug: str = "public",
        labeled_scale: tuple[float, float] = (0.5, 1.5),
        unlabeled_crop: str = "public",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)  # the teacher copies the model, representation head too
        check_labeled_aug(labeled_aug)
        check_labeled_aug(unlabeled_crop, "method.unlabeled_crop")
        if teacher_mode not in ("train", "eval"):
            raise ConfigError(f"method.teacher_mode={teacher_mode!r}: use train (public) or eval")
        self.teacher_mode = teacher_mode
        if unlabeled_aug not in ("public", "strong_view"):
            raise ConfigError(
                f"method.unlabeled_aug={unlabeled_aug!r}: use public (ReCo's rescale, mix, "
                "jitter) or strong_view (the workers' strong view, mixed)"
            )
        if len(unlabeled_scale) != 2 or not 0 < unlabeled_scale[0] <= unlabeled_scale[1]:
            raise ConfigError(
                f"method.unlabeled_scale={list(unlabeled_scale)}: give [low, high], 0 < low <= high"
            )
        self.unlabeled_aug = unlabeled_aug
        self.unlabeled_scale = tuple(unlabeled_scale)
        if not rgb_inputs(self.model) and unlabeled_aug == "public":
            # ReCo's jitter is defined on RGB images; a change pair (6 channels) keeps the
            # workers' strong view of each of its images, as strong_view does. Decided once.
            note_once(
                "css: method.unlabeled_aug=public jitters RGB images; this model takes image "
                "pairs or other channels: using method.unlabeled_aug=strong_view"
            )
            self.unlabeled_aug = "strong_view"
        self.mix_gather = bool(mix_gather)
        if label_mode not in ("cross", "mix"):
            raise ConfigError(f"method.label_mode={label_mode!r}: use cross or mix")
        head = getattr(self.model, "representation", None)
        if head is None or head[-1].out_channels != representation_dim:
            raise ConfigError(
                f"method css needs a model with a {representation_dim}-d representation head "
                "(model.representation_dim follows method.representation_dim by default)"
            )
        self.label_mode = label_mode
        self.rep_temperature = rep_temperature
        self.weak_threshold = weak_threshold
        self.contrast = dict(
            strong_threshold=strong_threshold,
            num_queries=num_queries,
            num_negatives=num_negatives,
            temperature=contrast_temperature,
        )
        self.prototype_alpha = prototype_alpha
        self.rampdown_epochs = rampdown_epochs
        self.mix_mode = mix_mode
        self.register_buffer("prototypes", torch.zeros(self.num_classes, representation_dim))
        self._new_prototypes = None
        self.labeled_epoch_steps = None

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        needs = super().data_requirements(method_cfg)
        needs["labeled_aug"] = check_labeled_aug(method_cfg.get("labeled_aug", "public"))
        needs["labeled_scale"] = tuple(method_cfg.get("labeled_scale", (0.5, 1.5)))
        crop = method_cfg.get("unlabeled_crop", "public")
        needs["unlabeled_crop"] = check_labeled_aug(crop, "method.unlabeled_crop")
        return needs

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # The public epoch: one pass of each rank's DistributedSampler share of the labeled list
        # (without a data module, as in unit tests, the ramp runs over the whole training).
        files = getattr(getattr(self.trainer, "datamodule", None), "files", None)
        if files is not None:
            per_rank = math.ceil(len(files.labeled) / self.trainer.world_size)
            self.labeled_epoch_steps = max(1, per_rank // self.trainer.datamodule.batch_size)

    def contrast_weight(self) -> float:
        if self._trainer is None:  # semiseg.tools.bench: the first epoch's weight
            return 1.0
        if self.rampdown_epochs is None or not self.labeled_epoch_steps:
            return rampdown(self.global_step, self.total_steps)
        return rampdown(self.global_step // self.labeled_epoch_steps, self.rampdown_epochs)

    def training_losses(self, batch: TrainBatch):
        x, y = batch.labeled.image, batch.labeled.mask
        u = batch.unlabeled
        weak, ignore = u.weak, u.ignore
        padded = ignore == IGNORE_INDEX

        # 1. The teacher's labels of the weak view in both spaces (the cosines are upsampled to
        #    the image before the softmax, as the public code). Padded pixels get confidence 0,
        #    the public padding fill, so they never count as confident.
        with torch.no_grad():
            if self.teacher_mode == "train":  # the public teacher: batch statistics
                teacher = self.teacher.with_batch_statistics(weak, outputs=BOTH)
            else:
                teacher = self.teacher(weak, outputs=BOTH)
            conf_c, labels_c = pseudo_labels(teacher["logits"])
            similarity = prototype_similarity(teacher["representation"], self.prototypes)
            similarity = upsample(similarity, weak.shape[-2:])
            conf_r, labels_r = representation_pseudo_labels(similarity, self.rep_temperature)
        # 2. The images the student sees, with both spaces' labels moved alike.
        if self.unlabeled_aug == "public":  # rescaled, mixed, jittered
            logit_space = Mixed(weak, labels_c, conf_c.masked_fill(padded, 0), ignore)
            rep_space = Mixed(weak, labels_r, conf_r.masked_fill(padded, 0), ignore)
            views = rescale_and_crop((logit_space, rep_space), self.unlabeled_scale)
            logit_space, rep_space = reco_jitter(self.mixed(views))
        else:  # strong_view: the workers' strong view, mixed after its colour change
            logit_space = Mixed(u.strong1, labels_c, conf_c.masked_fill(padded, 0), ignore)
            rep_space = Mixed(u.strong1, labels_r, conf_r.masked_fill(padded, 0), ignore)
            logit_space, rep_space = self.mixed((logit_space, rep_space))

        # 3. The student, labeled and unlabeled images in separate forwards (separate BatchNorm
        #    batches, as the public code).
        out_x = self.model(x, outputs=BOTH)
        out_u = self.model(logit_space.images, outputs=BOTH)
        loss_x = self.labeled_loss(out_x["logits"], y)

        # 4. The unsupervised loss: which labels, and whose confidence weighs each image.
        usable = logit_space.ignore != IGNORE_INDEX
        if self.label_mode == "cross":
            target, conf = rep_space.labels, rep_space.conf
        else:  # mix: the logit labels where both spaces agree
            usable = usable & (logit_space.labels == rep_space.labels)
            target, conf = logit_space.labels, logit_space.conf
        weights = confident_fraction(conf, usable, self.tau)
        loss_u = weighted_pseudo_label_loss(out_u["logits"], target, usable, weights)

        # 5. The contrastive loss on all representations (stride 4): labeled pixels by ground
        #    truth, unlabeled ones by the logit labels where confident (>= weak_threshold).
        rep = torch.cat((out_x["representation"], out_u["representation"]))
        contrast_u = logit_space.labels.masked_fill(
            ~usable | (logit_space.conf < self.weak_threshold), IGNORE_INDEX
        )
        size = rep.shape[-2:]
        labels = torch.cat((nearest(y, size), nearest(contrast_u, size)))
        with torch.no_grad():
            similarity = prototype_similarity(rep.detach(), self.prototypes)
            indicator = (similarity / self.rep_temperature).softmax(1)
        self._new_prototypes = self.updated_prototypes(rep, labels)
        loss_c = contrastive_loss(rep, labels, indicator, self._new_prototypes, **self.contrast)
        omega = self.contrast_weight()

        learned_labels, learned_conf = (
            (labels_r, conf_r) if self.label_mode == "cross" else (labels_c, conf_c)
        )
        return {
            "loss": loss_x + self.weight_u * loss_u + omega * loss_c,
            "loss_x": loss_x,
            "loss_u": loss_u,
            "loss_contrast": loss_c,
            "contrast_weight": omega,
            "image_weight": weights.mean(),
            "mask_ratio": mask_ratio(conf_c, ignore, self.tau),
            "rep_mask_ratio": mask_ratio(conf_r, ignore, self.tau),
            "pseudo_acc": pseudo_label_accuracy(learned_labels, learned_conf, u.gt, self.tau),
        }

    def mixed(self, views: tuple[Mixed, ...]) -> tuple[Mixed, ...]:
        """ReCo's mix: image i with image i + 1, of all ranks' batch as public (`mix_gather`),
        else within this rank's batch."""
        if self.mix_gather:
            return mix_across_ranks(views, self.mix_mode)
        return mix_within_batch(views, self.mix_mode)

    @torch.no_grad()
    def updated_prototypes(self, rep, labels):
        """This batch's class means folded into the prototypes, summed over all ranks."""
        sums, counts = class_sums(rep, labels, self.num_classes)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            both = torch.cat((sums, counts.unsqueeze(1)), dim=1)
            dist.all_reduce(both)
            sums, counts = both[:, :-1], both[:, -1]
        return update_prototypes(self.prototypes, sums, counts, self.prototype_alpha)

    def after_optimizer_step(self) -> None:
        # The prototypes move with the step that used them (none for a skipped step).
        if self._new_prototypes is not None:
            self.prototypes.copy_(self._new_prototypes)
            self._new_prototypes = None
        super().after_optimizer_step()
