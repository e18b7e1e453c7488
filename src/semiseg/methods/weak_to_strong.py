"""What FixMatch and UniMatch share: the CutMix partner ("mix") batch and its pseudo-labels.

Partners (`mix_partner`):
- `same`: the same images in the same order, augmented a second time (the public code's
  behaviour: one sampler drives both loaders). The data module delivers them as `batch.mix`.
- `shuffle`: other unlabeled images, drawn at random by the data module.
- `flip`: the batch itself in reverse order (`batch.flip(0)`, as UniMatch V2). No extra views
  are loaded and no extra forward runs: the partner's pseudo-labels are the weak view's.

Strong views (`strong_views`):
- `workers`: made per image by the DataLoader workers from the 8-bit crop (the public code).
- `step`: the workers send weak views only; the strong views (same distributions,
  `augment/strong.py`) and CutMix boxes are made here on the whole batch, on the model's device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from semiseg.augment.mixing import paste, unimatch_boxes
from semiseg.augment.strong import unimatch_strong
from semiseg.data.batch import Unlabeled
from semiseg.errors import ConfigError
from semiseg.methods.base import SemiSegModule
from semiseg.methods.losses import confident_dice_loss, consistency_loss, pseudo_labels

MIX_PARTNERS = ("same", "shuffle", "flip")
STRONG_VIEWS = ("workers", "step")


class WeakToStrongModule(SemiSegModule):
    uses_unlabeled = True

    def __init__(
        self,
        *args,
        tau: float = 0.95,
        mix_partner: str = "same",
        mix_forward_eval: bool = True,
        strong_views: str = "workers",
        unlabeled_loss: str = "ce",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if unlabeled_loss not in ("ce", "dice"):
            raise ConfigError(
                f"method.unlabeled_loss={unlabeled_loss!r}: use ce (thresholded cross-entropy) or "
                "dice (soft Dice on the confident pixels, the public ACDC code)"
            )
        self.unlabeled_loss_name = unlabeled_loss
        if mix_partner not in MIX_PARTNERS:
            raise ConfigError(
                f"method.mix_partner '{mix_partner}' is unknown: use one of {', '.join(MIX_PARTNERS)}"
            )
        if strong_views not in STRONG_VIEWS:
            raise ConfigError(
                f"method.strong_views '{strong_views}' is unknown: use one of "
                f"{', '.join(STRONG_VIEWS)}"
            )
        self.strong_views = strong_views
        self.tau = tau
        self.mix_partner = mix_partner
        self.mix_forward_eval = mix_forward_eval

    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        partner = method_cfg.get("mix_partner", "same")
        in_step = method_cfg.get("strong_views", "workers") == "step"
        return {
            "unlabeled": True,
            "num_strong": 0 if in_step else cls.num_strong_views,
            "mix": None if partner == "flip" else partner,
        }

    def unlabeled_views(self, u: Unlabeled) -> tuple[Unlabeled, Unlabeled]:
        """(the unlabeled batch with its strong views and boxes, the partner batch's views)."""
        if self.strong_views == "step":
            n, size = len(u), u.weak.shape[-1]
            made, partner = {}, {}
            for k in range(1, self.num_strong_views + 1):
                made[f"strong{k}"] = unimatch_strong(u.weak)
                made[f"box{k}"] = unimatch_boxes(n, size, device=u.weak.device)
                if self.mix_partner != "flip":
                    partner[f"strong{k}"] = unimatch_strong(u.mix.weak)
            mix = u.mix.with_views(**partner) if partner else u.mix
            u = u.with_views(**made, mix=mix)
        return u, (u.flipped() if self.mix_partner == "flip" else u.mix)

    @torch.no_grad()
    def mix_pseudo_labels(self, mix_weak: Tensor) -> tuple[Tensor, Tensor]:
        """(conf, labels) of the partner batch from a no-grad forward, in eval mode by default
        (the reference switches BatchNorm to its running statistics for this forward)."""
        if self.mix_forward_eval:
            self.model.eval()
        conf, labels = pseudo_labels(self.model(mix_weak))
        self.model.train()
        return conf, labels

    def unlabeled_loss(self, logits: Tensor, labels: Tensor, conf: Tensor, ignore: Tensor):
        """Thresholded CE over the non-padded pixels (`unlabeled_loss=ce`), or soft Dice on the
        confident pixels (`dice`: the public medical code's, set by the ACDC dataset config)."""
        if self.unlabeled_loss_name == "dice":
            return confident_dice_loss(logits, labels, conf, ignore, self.tau)
        return consistency_loss(logits, labels, conf, ignore, self.tau)


class Targets(NamedTuple):
    """What a view is trained towards: pseudo-labels, their confidences, the ignore mask."""

    labels: Tensor  # (N, H, W)
    conf: Tensor  # (N, H, W)
    ignore: Tensor  # (N, H, W), 255 = not trained on

    def cutmix(self, box: Tensor, partner: Targets) -> Targets:
        """The targets of a CutMixed strong view: ours outside the box, the partner's inside."""
        return Targets(*(paste(box, own, other) for own, other in zip(self, partner, strict=True)))
