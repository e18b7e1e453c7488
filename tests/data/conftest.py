"""Fixtures for the data tests; `toy_root` (the session's toy dataset) is in tests/conftest.py."""

import random

import pytest
import torch


@pytest.fixture
def seeded():
    """Fix both RNGs the transforms draw from."""
    random.seed(0)
    torch.manual_seed(0)
