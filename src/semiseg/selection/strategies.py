"""Selection strategies: pure functions from per-image values to the chosen pool indices.

Every strategy returns `budget` distinct indices into the pool, in the order chosen; higher
scores mean "more worth labeling". Ties go to the image listed first in unlabeled.txt, so a
choice never depends on the sort algorithm.

- random: the baseline every active-learning paper compares against; seeded.
- entropy: highest mean pixel entropy of the softmax (Shannon). Uncertainty sampling, Lewis &
  Gale, "A sequential algorithm for training text classifiers", SIGIR 1994; entropy as the
  measure: Wang & Shang, "A new active labeling method for deep learning", IJCNN 2014.
- margin: smallest mean gap between the two most probable classes (scored as 1 - gap).
  Scheffer, Decomain & Wrobel, "Active hidden Markov models for information extraction",
  IDA 2001.
- disagreement: largest mean disagreement between two predictions of the same image (teacher
  and student, or clean and feature-perturbed streams), a committee of two. Seung, Opper &
  Sompolinsky, "Query by committee", COLT 1992.
- kcenter: greedy k-center (core-set) on pooled encoder features, Sener & Savarese, "Active
  learning for convolutional neural networks: a core-set approach", ICLR 2018; each image's
  distance to the chosen and labeled images is weighted by its uncertainty (mean entropy), so
  the pick balances diversity with uncertainty as BADGE does with gradient embeddings (Ash et
  al., "Deep batch active learning by diverse, uncertain gradient lower bounds", ICLR 2020).
"""

from __future__ import annotations

import numpy as np

from semiseg.errors import ConfigError

# strategy -> the per-image score it ranks by (scores.csv column); kcenter also reads features
STRATEGIES = {
    "random": None,
    "entropy": "entropy",
    "margin": "margin",
    "disagreement": "disagreement",
    "kcenter": "entropy",
}


def check_budget(budget, pool_size: int, what: str = "unlabeled images") -> int:
    """The budget as an int in 1..pool_size, or one line saying what is wrong."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise ConfigError(f"budget={budget}: give the number of images to label next (>= 1)")
    if budget < 1:
        raise ConfigError(f"budget={budget}: give the number of images to label next (>= 1)")
    if budget > pool_size:
        raise ConfigError(
            f"budget={budget} is more than the {pool_size} {what} of the split: "
            f"give budget <= {pool_size}"
        )
    return int(budget)


def check_strategy(name) -> str:
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name}: choose one of {', '.join(STRATEGIES)}")
    return name


def choose_random(pool_size: int, budget: int, seed: int) -> np.ndarray:
    """`budget` distinct indices drawn uniformly with numpy's generator seeded with `seed`."""
    budget = check_budget(budget, pool_size)
    return np.random.default_rng(seed).choice(pool_size, size=budget, replace=False)


def choose_top(scores, budget: int) -> np.ndarray:
    """The `budget` highest scores, highest first; equal scores in pool order."""
    scores = np.asarray(scores, dtype=np.float64)
    budget = check_budget(budget, len(scores))
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return np.argsort(-scores, kind="stable")[:budget]


def choose_weighted_kcenter(features, weights, labeled_features, budget: int) -> np.ndarray:
    """Greedy k-center weighted by uncertainty.

    features (N, D): the pool; weights (N,): each image's uncertainty (>= 0); labeled_features
    (M, D): the images already labeled (M may be 0). Each step picks the image maximising
    weight * (Euclidean distance to its nearest labeled or already chosen image); without
    labeled images the first pick has no distance to weigh and is the most uncertain image.
    Equal values go to the first in pool order.
    """
    features = np.asarray(features, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    labeled = np.asarray(labeled_features, dtype=np.float64).reshape(-1, features.shape[1])
    budget = check_budget(budget, len(features))
    if weights.shape != (len(features),) or (weights < 0).any():
        raise ValueError("weights must be one non-negative value per pool image")
    nearest = np.full(len(features), np.inf)
    if len(labeled):
        nearest = _distances(features, labeled).min(axis=1)
    chosen: list[int] = []
    for _ in range(budget):
        value = weights * nearest if np.isfinite(nearest).any() else weights.copy()
        value[chosen] = -np.inf  # chosen images sit at 0, as do zero-weight ones: never twice
        pick = int(np.argmax(value))  # the first of equal maxima
        chosen.append(pick)
        nearest = np.minimum(nearest, _distances(features, features[pick : pick + 1])[:, 0])
    return np.asarray(chosen, dtype=np.int64)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b))."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def choose(strategy: str, budget: int, pool_size: int, scores: dict, seed: int = 0) -> np.ndarray:
    """The chosen pool indices of `strategy`. `scores` holds per-image arrays by name
    (`entropy`, `margin`, `disagreement`) and, for kcenter, `features` and `labeled_features`."""
    strategy = check_strategy(strategy)
    if strategy == "random":
        return choose_random(pool_size, budget, seed)
    if strategy == "kcenter":
        return choose_weighted_kcenter(
            scores["features"], scores["entropy"], scores["labeled_features"], budget
        )
    return choose_top(scores[STRATEGIES[strategy]], budget)
