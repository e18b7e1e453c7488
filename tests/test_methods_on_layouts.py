"""Every semi-supervised method trains a step and validates on every dataset layout's fixtures
(the real config, data module and Lightning loop, in process): each method's data needs (strong
views, mix partners, labeled boxes, bigger FST-W batches) meet each layout's label maps, ignore
values, class counts and evaluation modes."""

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from semiseg.run.build import build_data_and_method

sys.path.insert(0, str(Path(__file__).parent))
from cli import REPO, TINY  # noqa: E402
from test_datasets_end_to_end import CASES, prepare  # noqa: E402
from trainers import quiet_trainer

METHODS = ["fixmatch", "unimatch", "meanteacher", "imas", "augseg", "fst", "css"]


@pytest.fixture(scope="module")
def layout_roots(tmp_path_factory):
    """Each layout built (and prepared) once for all methods."""
    roots = {}
    for name, (build, folder, _, module, *_rest) in CASES.items():
        if name == "coco" and not _has_pycocotools():
            continue
        root = build(tmp_path_factory.mktemp(name) / folder)
        if module:
            prepare(module, root)
        roots[name] = root
    return roots


def _has_pycocotools() -> bool:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(CASES))
def test_method_trains_and_validates_on_layout(layout_roots, name, method):
    if name not in layout_roots:
        pytest.skip("pycocotools is not installed")
    split = CASES[name][2]
    overrides = [f"dataset={name}", f"dataset.root={layout_roots[name]}", f"method={method}"]
    overrides += [*TINY, "trainer.max_steps=1", *([f"split={split}"] if split else [])]
    if method == "fst":
        overrides.append("method.k=1")  # one virtual step: the look-ahead path, cheaply
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule, module = build_data_and_method(cfg)
    trainer = quiet_trainer(
        max_steps=1,
        limit_val_batches=1,
        val_check_interval=1,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    assert len(module.val_history) == 1 and 0.0 <= module.val_history[0]["miou"] <= 100.0
    assert len(module.last_state["per_class_iou"]) == CASES[name][6]
