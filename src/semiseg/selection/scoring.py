"""The checkpoint's network(s) over the unlabeled pool: per-image uncertainty scores, a small
uncertainty map per image (the contact sheet) and, for kcenter, pooled encoder features.

Each image is predicted as eval.py predicts the dataset (whole image or sliding window; softmax
normalised per pixel). `disagreement` asks the method for its two predictions of one image
(`prediction_pair`: teacher and student, or UniMatch's clean and feature-perturbed streams) on
the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from semiseg.errors import ConfigError
from semiseg.selection.uncertainty import (
    disagreement_map,
    entropy_map,
    image_score,
    margin_map,
)

MAP_SIDE = 96  # the long side of the uncertainty maps kept for the contact sheet
ENCODER_PATHS = ("backbone", "net.encoder")  # where the models keep their encoder


@dataclass
class PoolScores:
    entropy: np.ndarray
    margin: np.ndarray
    disagreement: np.ndarray | None = None
    features: np.ndarray | None = None
    labeled_features: np.ndarray | None = None
    maps: list[np.ndarray] = field(default_factory=list)  # entropy maps, <= MAP_SIDE px

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None and k != "maps"}


def pair_seed(seed: int, index: int) -> int:
    """The seed of the feature-perturbation dropout of pool image `index`: one per image, so
    that an image's disagreement does not depend on which images were scored before it (or on
    which process scored it)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@torch.no_grad()
def score_one(module, fmt, x: Tensor, pair: bool, features: bool, seed: int) -> dict:
    """The scores of one input (1, C, H, W): entropy, margin, the small entropy map and, if
    asked, the disagreement of the method's two predictions and the pooled encoder features."""
    network = module.eval_network
    probs = fmt.probabilities(network, x)[0]
    pixel_entropy = entropy_map(probs)
    record = {
        "entropy": image_score(pixel_entropy),
        "margin": image_score(margin_map(probs)),
        "map": small_map(pixel_entropy),
    }
    if pair:
        torch.manual_seed(seed)
        logits_a, logits_b = module.prediction_pair(fmt.network_input(x))
        probs_a, probs_b = logits_a.float().softmax(1)[0], logits_b.float().softmax(1)[0]
        record["disagreement"] = image_score(disagreement_map(probs_a, probs_b))
    if features:
        record["feature"] = pooled_encoder_features(network, fmt.network_input(x))[0].cpu().numpy()
    return record


def shard(count: int, rank: int, world: int) -> range:
    """The indices one process scores: every world-th from its rank."""
    return range(rank, count, world)


@torch.no_grad()
def score_pool(
    module,
    fmt,
    pool: list,
    labeled: list,
    pair: bool,
    features: bool,
    device: torch.device,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """This process's share of the scores: {"pool": {index: record}, "labeled": {index:
    feature}} for its shard of the pool (and, for `features`, of the labeled samples). Merged
    over the processes by `merge`."""
    mine = {}
    for i in tqdm(shard(len(pool), rank, world), desc="score unlabeled images", unit="img"):
        x = fmt.load(pool[i]).to(device)
        mine[i] = score_one(module, fmt, x, pair, features, pair_seed(seed, i))
    labeled_features = {}
    if features:
        for i in tqdm(shard(len(labeled), rank, world), desc="features of labeled images"):
            x = fmt.network_input(fmt.load(labeled[i]).to(device))
            labeled_features[i] = pooled_encoder_features(module.eval_network, x)[0].cpu().numpy()
    return {"pool": mine, "labeled": labeled_features}


def merge(parts: list[dict], pool_size: int, labeled_size: int, pair: bool, features: bool):
    """The processes' shares as one PoolScores in pool order."""
    records = {i: r for part in parts for i, r in part["pool"].items()}
    if sorted(records) != list(range(pool_size)):
        raise RuntimeError(f"scores of {len(records)} of {pool_size} pool images came back")
    ordered = [records[i] for i in range(pool_size)]
    scores = PoolScores(
        np.asarray([r["entropy"] for r in ordered]),
        np.asarray([r["margin"] for r in ordered]),
        maps=[r["map"] for r in ordered],
    )
    if pair:
        scores.disagreement = np.asarray([r["disagreement"] for r in ordered])
    if features:
        scores.features = np.stack([r["feature"] for r in ordered])
        labeled = {i: f for part in parts for i, f in part["labeled"].items()}
        scores.labeled_features = (
            np.stack([labeled[i] for i in range(labeled_size)])
            if labeled_size
            else scores.features[:0]
        )
    return scores


def small_map(pixel_map: Tensor) -> np.ndarray:
    """The map shrunk (area average) to at most MAP_SIDE px on its long side, float32."""
    h, w = pixel_map.shape
    scale = min(1.0, MAP_SIDE / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(pixel_map[None, None].float().cpu(), size=size, mode="area")
    return small[0, 0].numpy()


def encoder_of(network: nn.Module) -> nn.Module:
    for path in ENCODER_PATHS:
        try:
            return network.get_submodule(path)
        except AttributeError:
            continue
    raise ConfigError(
        f"strategy=kcenter pools encoder features, and {type(network).__name__} has no "
        f"encoder at {' or '.join(ENCODER_PATHS)}: choose strategy=entropy, margin or random"
    )


def pooled_encoder_features(network: nn.Module, image: Tensor) -> Tensor:
    """The encoder's deepest feature of `image`, averaged over its spatial positions (or
    tokens): (N, D). An encoder that runs once per image of a pair (change detection) gives
    both, concatenated. An encoder whose forward is not called (a ViT read layer by layer)
    gives the output of its last layer that ran."""
    encoder = encoder_of(network)
    calls: list[tuple[nn.Module, Tensor]] = []

    def record(module, args, output):
        deepest = output[-1] if isinstance(output, list | tuple) else output
        if isinstance(deepest, Tensor) and deepest.dim() in (3, 4):
            calls.append((module, deepest))

    hooks = [m.register_forward_hook(record) for m in encoder.modules()]
    try:
        network(image)
    finally:
        for hook in hooks:
            hook.remove()
    own = [out for module, out in calls if module is encoder]
    if not own and not calls:
        raise ConfigError(
            "strategy=kcenter: the encoder gave no feature map: choose another strategy"
        )
    outputs = own or [calls[-1][1]]
    return torch.cat([pool(out) for out in outputs], dim=1).float()


def pool(feature: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C); tokens (N, L, D) -> (N, D)."""
    return feature.mean((2, 3)) if feature.dim() == 4 else feature.mean(1)
