"""Each selection strategy's choice on hand-made scores (values worked out by hand below)."""

import numpy as np
import pytest
import torch

from semiseg.errors import ConfigError
from semiseg.selection.strategies import (
    check_budget,
    choose,
    choose_random,
    choose_top,
    choose_weighted_kcenter,
)
from semiseg.selection.uncertainty import disagreement_map, entropy_map, margin_map


def test_top_scores_first_and_ties_in_pool_order():
    # 0.9 twice (pool 1 and 3): pool order breaks the tie, then 0.5
    assert choose_top([0.2, 0.9, 0.5, 0.9], 3).tolist() == [1, 3, 2]
    assert choose_top([0.7, 0.7, 0.7], 2).tolist() == [0, 1]


def test_entropy_margin_and_disagreement_rank_by_their_own_score():
    scores = {
        "entropy": np.array([0.1, 0.8, 0.3]),
        "margin": np.array([0.9, 0.2, 0.4]),
        "disagreement": np.array([0.0, 0.1, 0.6]),
    }
    assert choose("entropy", 1, 3, scores).tolist() == [1]
    assert choose("margin", 1, 3, scores).tolist() == [0]
    assert choose("disagreement", 1, 3, scores).tolist() == [2]


def test_random_is_seeded_distinct_and_within_the_pool():
    a, b = choose_random(50, 10, seed=3), choose_random(50, 10, seed=3)
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 50
    assert choose_random(50, 10, seed=4).tolist() != a.tolist()
    assert sorted(choose_random(5, 5, seed=0).tolist()) == [0, 1, 2, 3, 4]


def test_weighted_kcenter_by_hand():
    # Pool on a line at 1, 2, 6, 10; one labeled image at 0; weights 1, 1, 1, 0.5.
    # Nearest distances 1, 2, 6, 10 -> values 1, 2, 6, 5: pick x=6 (index 2).
    # Then distances 1, 2, 0, 4 -> values 1, 2, -, 2: a tie, the first (index 1, x=2).
    # Then distances 1, 0, 0, 4 -> values 1, -, -, 2: index 3.
    pool = np.array([[1.0], [2.0], [6.0], [10.0]])
    labeled = np.array([[0.0]])
    weights = np.array([1.0, 1.0, 1.0, 0.5])
    assert choose_weighted_kcenter(pool, weights, labeled, 3).tolist() == [2, 1, 3]
    # Unweighted (plain k-center): the farthest, x=10, first; then distances 1, 2, 4, 0 -> x=6;
    # then 1, 2, 0, 0 -> x=2. The weight moved x=10 from first to last.
    assert choose_weighted_kcenter(pool, np.ones(4), labeled, 3).tolist() == [3, 2, 1]


def test_weighted_kcenter_without_labeled_images_starts_at_the_most_uncertain():
    # First pick: the largest weight (index 1, x=1). Then distances 1, 0, 4 weighted 0.2, -, 0.5
    # -> 0.2 against 2.0: index 2.
    pool = np.array([[0.0], [1.0], [5.0]])
    chosen = choose_weighted_kcenter(pool, np.array([0.2, 0.9, 0.5]), np.zeros((0, 1)), 2)
    assert chosen.tolist() == [1, 2]


def test_weighted_kcenter_never_picks_twice_with_zero_weights():
    pool = np.array([[0.0], [1.0], [2.0]])
    assert choose_weighted_kcenter(pool, np.zeros(3), np.array([[0.0]]), 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("budget", [0, -1, "ten", True, 2.5])
def test_bad_budget_is_one_line(budget):
    with pytest.raises(ConfigError, match=r"^budget=.*>= 1\)$"):
        check_budget(budget, 5)


def test_budget_larger_than_the_pool_is_one_line():
    with pytest.raises(ConfigError) as err:
        choose("entropy", 6, 5, {"entropy": np.zeros(5)})
    assert str(err.value) == (
        "budget=6 is more than the 5 unlabeled images of the split: give budget <= 5"
    )
    with pytest.raises(ConfigError, match="budget=6"):
        choose("random", 6, 5, {})


def test_unknown_strategy_is_one_line():
    with pytest.raises(ConfigError, match=r"^strategy=entropie: choose one of random, entropy"):
        choose("entropie", 1, 5, {})


def test_entropy_map_by_hand():
    # 4 classes: uniform -> 1; one-hot -> 0; (1/2, 1/2, 0, 0) -> log 2 / log 4 = 1/2
    probs = torch.tensor([[0.25, 1.0, 0.5], [0.25, 0.0, 0.5], [0.25, 0.0, 0.0], [0.25, 0.0, 0.0]])
    values = entropy_map(probs[:, None, :])[0]
    assert torch.allclose(values, torch.tensor([1.0, 0.0, 0.5]), atol=1e-6)


def test_margin_map_by_hand():
    # (0.5, 0.3, 0.2) -> 1 - 0.2; one-hot -> 0; a tie of the top two -> 1
    probs = torch.tensor([[0.5, 1.0, 0.4], [0.3, 0.0, 0.4], [0.2, 0.0, 0.2]])
    values = margin_map(probs[:, None, :])[0]
    assert torch.allclose(values, torch.tensor([0.8, 0.0, 1.0]), atol=1e-6)


def test_disagreement_map_by_hand():
    # opposite one-hots -> 1; (0.6, 0.4) against (0.4, 0.6) -> (0.2 + 0.2) / 2; equal -> 0
    a = torch.tensor([[1.0, 0.6, 0.3], [0.0, 0.4, 0.7]])
    b = torch.tensor([[0.0, 0.4, 0.3], [1.0, 0.6, 0.7]])
    values = disagreement_map(a[:, None, :], b[:, None, :])[0]
    assert torch.allclose(values, torch.tensor([1.0, 0.2, 0.0]), atol=1e-6)
