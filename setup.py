"""The packages of src/, and the repository's conf/ shipped inside them as semiseg/conf, where
`semiseg.paths.config_dir()` finds it in an installed package (pyproject.toml holds the rest)."""

from setuptools import find_namespace_packages, find_packages, setup

configs = ["semiseg.conf", *(f"semiseg.conf.{p}" for p in find_namespace_packages("conf"))]
setup(
    # hydra_plugins: the hyperparameter search's sweeper (Hydra looks for sweepers only there)
    packages=[
        *find_packages("src"),
        *find_namespace_packages("src", include=["hydra_plugins*"]),
        *configs,
    ],
    package_dir={"": "src", "semiseg.conf": "conf"},
    package_data={p: ["*.yaml"] for p in configs},
)
