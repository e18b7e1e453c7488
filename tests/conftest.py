"""Shared test setup: never reach a network; one toy dataset for the whole session."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from semiseg.data import toy

    return toy.ensure(tmp_path_factory.mktemp("data") / "toy")
