"""Shared fixtures: the toy dataset is generated once per test session."""

import random

import pytest
import torch

from semiseg.data import toy


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    return toy.generate(tmp_path_factory.mktemp("toy") / "toy", seed=0)


@pytest.fixture
def seeded():
    """Fix both RNGs the transforms draw from."""
    random.seed(0)
    torch.manual_seed(0)
