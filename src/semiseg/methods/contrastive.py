"""CSS's pure functions: pseudo-labels in the representation space, the per-image weights of its
unsupervised loss, class prototypes and ReCo's pixel contrastive loss.

Transcribed from the public CSS code (generalframeworks/networks/ddp_model.py `Model_cross`,
`Model_mix`; generalframeworks/loss/loss.py `Attention_Threshold_Loss`, `Contrast_Loss`;
generalframeworks/scheduler/rampscheduler.py `RampdownScheduler`). Conventions of
`methods/losses.py`: label maps (N, H, W) hold 255 where a pixel is not used.

Random draws (anchors, negatives) come from `generator` on the CPU, then move to the data's
device, so a seeded generator gives the same samples on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg.methods.losses import IGNORE_INDEX


def prototype_similarity(rep: Tensor, prototypes: Tensor) -> Tensor:
    """(N, C, h, w): cosine similarity of each pixel's representation (N, D, h, w) to each class
    prototype (C, D). A zero prototype (a class never seen) has similarity 0 with everything, as
    the public `F.normalize` gives. In float32 even under autocast: a 0.97 threshold on a
    softmax at T_r = 0.1 needs the cosines to better than bf16's 3 digits."""
    with torch.autocast(rep.device.type, enabled=False):
        rep, prototypes = F.normalize(rep.float(), dim=1), F.normalize(prototypes.float(), dim=1)
        return torch.einsum("ndhw,cd->nchw", rep, prototypes)


def representation_pseudo_labels(similarity: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Confidence and class in the representation space: max of softmax(similarity / T_r).

    The trap of the public scripts: with T_r = 0.5 the logits lie in [-2, 2], so even a pixel at
    cosine 1 to its prototype and -1 to the C - 1 others gets e^2 / (e^2 + (C - 1) e^-2), 0.73
    for C = 21 and 0.75 for C = 19: below the 0.97 threshold, always. Their model code's default
    (`Model_cross(temp=0.1)`) is what makes confident pixels possible."""
    conf, labels = (similarity.detach() / temperature).softmax(1).max(1)
    return conf, labels


def confident_fraction(conf: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """(N,) per image: pixels with conf >= threshold over pixels with a usable label, as
    `Attention_Threshold_Loss` (the numerator counts every pixel: conf must be 0 where padded or
    cut out, as the public code fills it; in `mix` mode it also counts confident pixels whose two
    labels disagree, so the weight may exceed 1 there, as in the public code). An image without a
    usable label gets 0 (the public code divides by zero: "may be nan")."""
    confident = (conf >= threshold).flatten(1).sum(1).float()
    usable = valid.flatten(1).sum(1)
    return torch.where(usable > 0, confident / usable.clamp(min=1), 0.0)


def weighted_pseudo_label_loss(logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor):
    """mean(weight_image * CE) over the pixels whose CE is > 0, as `Attention_Threshold_Loss`
    (`masked_select(..., loss > 0)`): unusable pixels (CE 0 by ignore_index) never count, and
    neither does a pixel learned to exactly 0 loss. Zero (with a graph) when no pixel counts."""
    target = labels.masked_fill(~valid, IGNORE_INDEX)
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    counted = ce > 0
    if not counted.any():
        return logits.sum() * 0.0
    return (weights.view(-1, 1, 1) * ce)[counted].mean()


def nearest(labels: Tensor, size) -> Tensor:
    """A label map at another size, nearest neighbour (`F.interpolate(mode='nearest')`, as the
    public code resizes its one-hot labels and masks to the representation's size)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def class_sums(rep: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(C, D) sums of the (detached) representations of each class's pixels and (C,) counts.
    Sums and counts, not means, so that ranks can all-reduce them into the global class means
    (the public code all-gathers every representation to take the same mean)."""
    d = rep.shape[1]
    flat = rep.detach().permute(0, 2, 3, 1).reshape(-1, d).float()
    labels = labels.reshape(-1)
    used = labels < num_classes
    sums = torch.zeros(num_classes, d, device=rep.device).index_add_(0, labels[used], flat[used])
    counts = torch.bincount(labels[used], minlength=num_classes).to(sums.dtype)
    return sums, counts


def update_prototypes(prototypes: Tensor, sums: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """The new prototypes: a class seen now (count > 0) moves to alpha * P + (1 - alpha) * mean,
    or takes the mean if its prototype was never set (all zero: the public `sum() == 0` test);
    an unseen class keeps its prototype. Returns a new tensor."""
    mean = sums / counts.clamp(min=1).unsqueeze(1)
    fresh = (prototypes == 0).all(1, keepdim=True)
    moved = torch.where(fresh, mean, alpha * prototypes + (1 - alpha) * mean)
    return torch.where((counts > 0).unsqueeze(1), moved, prototypes)


def contrastive_loss(
    rep: Tensor,
    labels: Tensor,
    indicator: Tensor,
    prototypes: Tensor,
    strong_threshold: float = 0.8,
    num_queries: int = 256,
    num_negatives: int = 512,
    temperature: float = 0.5,
    generator=None,
) -> Tensor:
    """ReCo's pixel contrastive loss with CSS's indicator (`Contrast_Loss`).

    rep (N, D, h, w): the student's representations (the gradient flows through the anchors
    only); labels (N, h, w): class or 255; indicator (N, C, h, w): the softmax over the
    similarities to the prototypes, whose value for a pixel's own class below `strong_threshold`
    marks it hard; prototypes (C, D): already updated with this batch (the positives).

    For each class present in the labels (in class order): `num_queries` anchors drawn with
    replacement among its hard pixels (a class without hard pixels adds nothing); for each anchor
    `num_negatives` negatives: a class drawn from the other present classes with probability
    softmax(cos(P_c, P_j) / temperature), then one of its pixels uniformly (with replacement);
    logits = cos(anchor, [P_c, negatives]) / temperature, cross-entropy towards P_c. The sum
    over classes is divided by the number of present classes, hard pixels or not. With one
    class or none: 0 (a zero that keeps the representation in the graph, as DDP needs).
    """
    n, d, h, w = rep.shape
    num_classes = indicator.shape[1]
    flat = rep.permute(0, 2, 3, 1).reshape(-1, d)
    labels = labels.reshape(-1)
    own = indicator.detach().permute(0, 2, 3, 1).reshape(-1, num_classes)
    present = [int(c) for c in torch.unique(labels[labels < num_classes])]
    if len(present) <= 1:
        return flat.sum() * 0.0
    members = [(labels == c).nonzero().flatten() for c in present]
    device = rep.device
    # a zero with a graph: the head must take part in every backward, anchors or not (DDP)
    total = flat.sum() * 0.0
    for k, c in enumerate(present):
        hard = members[k][own[members[k], c] < strong_threshold]
        if len(hard) == 0:
            continue
        anchors = flat[
            hard[torch.randint(len(hard), (num_queries,), generator=generator).to(device)]
        ]
        with torch.no_grad():
            # the other classes in the public order: k + 1, ..., then 0, ..., k - 1
            others = [present[(k + j) % len(present)] for j in range(1, len(present))]
            pools = [members[(k + j) % len(present)] for j in range(1, len(present))]
            similarity = F.cosine_similarity(prototypes[c].unsqueeze(0), prototypes[others], dim=1)
            probs = (similarity.float() / temperature).softmax(0).cpu()
            drawn = torch.multinomial(
                probs, num_queries * num_negatives, replacement=True, generator=generator
            )
            sizes = torch.tensor([len(p) for p in pools])
            starts = sizes.cumsum(0) - sizes
            u = torch.rand(len(drawn), generator=generator, dtype=torch.float64)
            picks = starts[drawn] + (u * sizes[drawn]).long()
            # unit vectors: cosines become dot products
            pool = F.normalize(flat[torch.cat(pools)], dim=1, eps=1e-8)
            positive = F.normalize(prototypes[c].to(flat.dtype), dim=0, eps=1e-8)
        anchors = F.normalize(anchors, dim=1, eps=1e-8)
        # Every anchor against every pixel of the pool, then each anchor's drawn negatives picked
        # out: the same cosines as gathering (Q, K, D) negatives as the public code does, with one
        # matrix product instead of copying Q x K representations (17x faster on the toy batch).
        negatives = (anchors @ pool.T).gather(1, picks.to(device).view(num_queries, num_negatives))
        logits = torch.cat(((anchors @ positive).unsqueeze(1), negatives), dim=1) / temperature
        target = torch.zeros(num_queries, dtype=torch.long, device=device)
        total = total + F.cross_entropy(logits, target)
    return total / len(present)


def rampdown(epoch: float, epochs: float) -> float:
    """The contrastive loss weight exp(-5 (e / E)^2), 0 from epoch E on (`RampdownScheduler`
    with the public config: begin 0, max_epoch 200, max 1, min 0, ramp_mult -5)."""
    return math.exp(-5.0 * (epoch / epochs) ** 2) if epoch < epochs else 0.0
