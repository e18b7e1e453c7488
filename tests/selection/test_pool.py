"""ACDC's cases, the per-unit scores and the merge of the processes' shares, by hand."""

import numpy as np
import pytest

from semiseg.data.splits import Sample
from semiseg.errors import ConfigError
from semiseg.selection.pool import case_of, check_unit, group, unit_groups
from semiseg.selection.scoring import merge, shard


def test_case_of_a_slice_file():
    assert case_of("data/slices/patient001_frame01_slice_12.h5") == "patient001_frame01"
    assert case_of("data/slices/odd_name.h5") == "odd_name"  # a case of one slice


def test_cases_group_their_slices_in_first_seen_order():
    files = ["b_slice_0.h5", "a_slice_0.h5", "b_slice_1.h5", "a_slice_1.h5", "c_slice_0.h5"]
    pool = group([Sample(f, None) for f in files], "case")
    assert pool.names == ["b", "a", "c"]
    assert pool.members == [[0, 2], [1, 3], [4]]
    assert [s.image for s in pool.unit_samples([2, 0])] == [
        "c_slice_0.h5",
        "b_slice_0.h5",
        "b_slice_1.h5",
    ]
    slices = group([Sample(f, None) for f in files], "slice")
    assert slices.names == files and slices.members == [[i] for i in range(5)]


def test_unit_scores_are_the_means_of_their_members():
    scores = np.array([0.1, 0.4, 0.3, 0.2, 0.9])
    assert unit_groups(scores, [[0, 2], [1, 3], [4]]).tolist() == pytest.approx([0.2, 0.3, 0.9])
    features = np.array([[0.0, 2.0], [4.0, 6.0]])
    assert unit_groups(features, [[0, 1]]).tolist() == [[2.0, 4.0]]


def test_shards_cover_the_pool_once_and_merge_in_pool_order():
    assert [list(shard(5, r, 2)) for r in range(2)] == [[0, 2, 4], [1, 3]]

    def record(i):
        return {
            "entropy": i / 10,
            "margin": 1 - i / 10,
            "map": np.full((2, 2), i),
            "feature": np.array([i, -i]),
        }

    parts = [
        {
            "pool": {i: record(i) for i in shard(5, r, 2)},
            "labeled": {i: np.array([i, 0]) for i in shard(3, r, 2)},
        }
        for r in (1, 0)  # gathered in any order
    ]
    merged = merge(parts, 5, 3, pair=False, features=True)
    assert merged.entropy.tolist() == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert [int(m[0, 0]) for m in merged.maps] == [0, 1, 2, 3, 4]
    assert merged.features[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert merged.labeled_features[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="scores of 2 of 5 pool images"):
        merge(parts[:1], 5, 3, pair=False, features=False)  # rank 1 alone: 2 of 5


def test_acdc_unit_is_case_or_slice():
    assert check_unit("case", "h5") == "case" and check_unit("slice", "h5") == "slice"
    assert check_unit("case", "images") == "image" and check_unit("case", "cd") == "pair"
    with pytest.raises(ConfigError, match=r"^unit=volume: ACDC chooses unit=case"):
        check_unit("volume", "h5")
