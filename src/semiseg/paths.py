"""Where semiseg finds its Hydra configs (`conf/`), from a source checkout or an installed package.

`config_dir()` looks, in order, at:
1. the folder named by the environment variable SEMISEG_CONFIG_DIR;
2. `semiseg/conf` inside the package (a wheel carries the repository's conf/ there);
3. the checkout's `conf/`, beside `src/` (an editable install or PYTHONPATH=src).
"""

from __future__ import annotations

import os
from pathlib import Path

from semiseg.errors import ConfigError

ENV = "SEMISEG_CONFIG_DIR"
PACKAGE = Path(__file__).resolve().parent


def checkout_dir() -> Path:
    """The source checkout this package was imported from (the folder holding `src/`)."""
    return PACKAGE.parents[1]


def config_dir() -> Path:
    """The folder of the Hydra configs (the one holding train.yaml)."""
    chosen = os.environ.get(ENV)
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not (path / "train.yaml").is_file():
            raise ConfigError(f"{ENV}={chosen}: no train.yaml there; point it at a conf/ folder")
        return path
    for path in (PACKAGE / "conf", checkout_dir() / "conf"):
        if (path / "train.yaml").is_file():
            return path
    raise ConfigError(
        f"no semiseg configs found (neither {PACKAGE / 'conf'} nor {checkout_dir() / 'conf'}): "
        f"set {ENV} to a conf/ folder"
    )
