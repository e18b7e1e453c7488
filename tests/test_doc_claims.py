"""What the README and docs/ state about the project's own files, held against those files:
the make targets, the trainer keys the runner keeps for itself."""

import re

from cli import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from semiseg.run.build import trainer_arguments


def _make_targets() -> list[str]:
    """The targets `make help` prints: the lines `name: ... ## text` of the Makefile."""
    text = (REPO / "Makefile").read_text()
    return re.findall(r"^([a-z]+):.*## ", text, flags=re.MULTILINE)


def test_the_readme_names_every_make_help_target():
    readme = " ".join((REPO / "README.md").read_text().split())
    listed = re.search(r"`make help` lists every target \(([^)]*)\)", readme)
    assert listed, "the README no longer says which targets make help lists"
    assert re.findall(r"`([a-z]+)`", listed[1]) == _make_targets()


def test_the_trainer_keys_of_the_project_are_the_ones_the_docs_name():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.accelerator=cpu"])
    lightning_args, own = trainer_arguments(cfg, multirun=False)
    kept = set(OmegaConf.to_container(cfg.trainer)) - set(lightning_args)
    yaml = (REPO / "conf" / "trainer" / "default.yaml").read_text()
    marked = re.findall(r"^# semiseg:.*\n(?:#.*\n)*([a-z_]+):", yaml, flags=re.MULTILINE)
    assert set(marked) == kept == {"checkpoint_every", "channels_last", "compile"}
    operations = " ".join((REPO / "docs" / "operations.md").read_text().split())
    sentence = re.search(r"\(([^()]*) are this project's keys in the trainer group", operations)
    assert sentence and set(re.findall(r"`trainer\.([a-z_]+)`", sentence[1])) == kept


def _names(cell: str) -> set[str]:
    """The config names in a table cell: backticked plain names; in the experiment row,
    'the same for `a` and `b`' and 'their `_toy` versions' are expanded."""
    names = set()
    for clause in cell.split(";"):
        listed, _, same_for = clause.partition("the same for")
        found = re.findall(r"`([a-z0-9_]+)`", listed)
        names.update(found)
        for method in re.findall(r"`([a-z0-9_]+)`", same_for):
            prefix = found[0].split("_")[0]
            names.update(method + n[len(prefix) :] for n in found)
        if "their `_toy` versions" in clause:
            names.update(n + "_toy" for n in found if n != "_toy")
    names.discard("_toy")
    return names


def test_the_configuration_table_lists_every_choice_of_each_group():
    text = (REPO / "docs" / "recipes.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z_/]+)` \| (.*?) \|", section, re.M)}
    automatic = {"recipe", "method_recipe"}  # chosen from the dataset and method, not by hand
    assert set(rows) == {p.name for p in (REPO / "conf").iterdir() if p.is_dir()} - {"hydra"} | {
        "hydra/launcher"
    }
    for group, cell in rows.items():
        if group in automatic:
            continue
        files = {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}
        builtin = {"basic"} if group == "hydra/launcher" else set()  # Hydra's own launcher
        assert _names(cell) == files | builtin, group


def test_the_first_run_line_in_the_docs_is_the_one_the_stored_reference_prints():
    from semiseg.run.results import versus_reference

    text = (REPO / "docs" / "results.md").read_text()
    section = text.split("## The first run", 1)[1].split("\n## ", 1)[0]
    line = re.search(r"```\n(unimatch [^\n]*)\n```", section)[1]
    unimatch = float(re.match(r"unimatch (\d+\.\d+) vs", line)[1])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=first_run"])
    run = {"method": "unimatch", "best_val_miou": unimatch, "split": 10, "steps": 800,
           "precision": "bf16-mixed"}  # fmt: skip
    assert line == versus_reference(run, cfg.reference)
    assert f"UniMatch best {unimatch:.2f}" in " ".join(section.split())  # the run described


def _layout_block(path) -> str:
    text = (REPO / path).read_text()
    start = text.index("```\ntrain.py eval.py predict.py export.py")
    return text[start : text.index("```", start + 3)]


def test_the_layout_names_every_package_module_and_config_group():
    src = REPO / "src" / "semiseg"
    expected = [f"{p.name}/" for p in (REPO / "conf").iterdir() if p.is_dir()]
    expected += [f"{p.name}/" for p in src.iterdir() if (p / "__init__.py").is_file()]
    expected += [p.name for p in src.glob("*.py") if p.name != "__init__.py"]
    for package in ("run", "checkpoints", "tasks"):
        expected += [p.name for p in (src / package).glob("*.py") if p.name != "__init__.py"]
    expected += [p.stem for p in (src / "tools").glob("*.py") if p.name != "__init__.py"]
    for path in ("README.md", "docs/methods.md"):
        words = set(re.findall(r"[\w.]+/?", _layout_block(path)))
        words |= {w.removesuffix(".py") for w in words}  # tools are named as modules
        assert sorted(set(expected) - words) == [], path


def test_the_unet_parameter_count_in_the_docs_is_the_models():
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=acdc", "model=unet", "dataset.root=unused"])
    model = instantiate(cfg.model, num_classes=len(cfg.dataset.classes))
    count = sum(p.numel() for p in model.parameters())
    text = " ".join((REPO / "docs" / "data.md").read_text().split())
    stated = re.search(
        r"`model=unet` is the public code's UNet \([^)]*?(\d+\.\d) M parameters", text
    )
    assert stated and float(stated[1]) == round(count / 1e6, 1), count
