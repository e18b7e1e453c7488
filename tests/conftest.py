"""Shared test setup: never reach a network; one toy dataset for the whole session."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
# Empty hub caches: model.pretrained=imagenet must not find weights a developer downloaded.
_HUB = tempfile.mkdtemp(prefix="semiseg-test-hub-")
os.environ["HF_HOME"], os.environ["TORCH_HOME"] = f"{_HUB}/hf", f"{_HUB}/torch"
os.environ.pop("HF_HUB_CACHE", None)
atexit.register(shutil.rmtree, _HUB, True)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from semiseg.data import toy

    return toy.ensure(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="session")
def varied_checkpoint(tmp_path_factory, toy_root) -> Path:
    """A tiny trained checkpoint with a random classifier (see trained.varied)."""
    from trained import train_varied

    return train_varied(tmp_path_factory.mktemp("run"), toy_root)
