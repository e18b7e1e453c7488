"""Where the tools find conf/: SEMISEG_CONFIG_DIR, the conf/ a wheel ships inside the package, or
the checkout's; and the wheel really ships it."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from cli import REPO

from semiseg import paths
from semiseg.errors import ConfigError
from semiseg.tools import recipes


def test_the_checkout_conf_is_found(monkeypatch):
    monkeypatch.delenv(paths.ENV, raising=False)
    assert not (paths.PACKAGE / "conf").exists()  # imported from src/, not from a wheel
    assert paths.config_dir() == REPO / "conf"


def test_the_environment_variable_names_a_copy(tmp_path, monkeypatch):
    copy = tmp_path / "my-conf"
    shutil.copytree(REPO / "conf", copy)
    train = copy / "train.yaml"
    train.write_text(train.read_text().replace("\nseed: 0", "\nseed: 1234", 1))
    monkeypatch.setenv(paths.ENV, str(copy))
    assert paths.config_dir() == copy
    assert recipes.compose_experiment("unimatch_pascal").seed == 1234  # a tool composes the copy


def test_a_conf_inside_the_package_comes_before_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ENV, raising=False)
    package = tmp_path / "site" / "semiseg"
    (package / "conf").mkdir(parents=True)
    (package / "conf" / "train.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(paths, "PACKAGE", package)
    assert paths.config_dir() == package / "conf"


def test_no_configs_anywhere_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PACKAGE", tmp_path / "lib" / "site" / "semiseg")
    monkeypatch.delenv(paths.ENV, raising=False)
    with pytest.raises(ConfigError, match=paths.ENV) as err:
        paths.config_dir()
    assert "\n" not in str(err.value)
    monkeypatch.setenv(paths.ENV, str(tmp_path))  # a folder without train.yaml
    with pytest.raises(ConfigError, match=f"{paths.ENV}={tmp_path}: no train.yaml"):
        paths.config_dir()


@pytest.mark.slow  # a wheel build: about 10 s
def test_the_wheel_ships_conf_and_an_installed_tool_finds_it(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "wheel"), str(source)], check=True)
    (wheel,) = (tmp_path / "wheel").glob("semiseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"semiseg/conf/{p.relative_to(REPO / 'conf')}" for p in REPO.glob("conf/**/*.yaml")}
    assert configs and configs <= names
    assert {"semiseg/tools/bench.py", "semiseg/checkpoints/io.py", "semiseg/paths.py"} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != paths.ENV}
    probe = (
        "from semiseg.paths import config_dir; from semiseg.tools import recipes; "
        "print(config_dir()); print(recipes.compose_experiment('unimatch_pascal').method.name)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(site / "semiseg" / "conf"), "unimatch"]
