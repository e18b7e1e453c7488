"""The README's custom-data quickstart, command for command: a folder of grayscale images with
binary masks stored as 0/255 -> split -> train.py -> eval.py -> predict.py."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from cli import REPO, TINY
from PIL import Image

from semiseg.data import transforms as tf


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- quickstart: custom -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no custom-data quickstart block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def cells_folder(root, n: int = 12, size=(48, 40)):
    """Grayscale ('L') images of dark noise with one bright rectangle, the rectangle's mask
    stored as 255 on 0, as many binary annotation tools write them."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    w, h = size
    for i in range(n):
        rng = np.random.default_rng(i)
        image = rng.integers(0, 80, (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        y, x = rng.integers(4, h - 16), rng.integers(4, w - 18)
        image[y : y + 12, x : x + 14] += 150
        mask[y : y + 12, x : x + 14] = 255
        Image.fromarray(image, mode="L").save(root / "images" / f"cell_{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"cell_{i:02d}.png")
    return root


def run(command: str, cwd, extra: list[str]) -> subprocess.CompletedProcess:
    """One README line, from `cwd` (where cells/ lies); python scripts are the repository's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    words = shlex.split(command, comments=True)
    if words[0] != "python":
        return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    words[0] = sys.executable
    if words[1].endswith(".py"):
        words[1] = str(REPO / words[1])
    return subprocess.run(
        [*words, *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_grayscale_images_load_as_rgb(tmp_path):
    root = cells_folder(tmp_path / "cells", n=1)
    path = root / "images" / "cell_00.png"
    assert Image.open(path).mode == "L"
    image = tf.load_image(path)
    assert image.mode == "RGB"
    channels = np.asarray(image)
    assert (channels[..., 0] == channels[..., 1]).all() and (
        channels[..., 1] == channels[..., 2]
    ).all()
    assert (channels[..., 0] == np.asarray(Image.open(path))).all()


@pytest.mark.slow  # about 50 s: three scripts and a split on a 2-core machine
def test_readme_quickstart_on_binary_grayscale_folder(tmp_path):
    commands = quickstart_commands()
    assert len(commands) == 5
    assert [c.split()[1] for c in commands[1:]] == [
        "-m",
        "train.py",
        "eval.py",
        "predict.py",
    ]
    cells_folder(tmp_path / "cells")
    extra = {"train.py": [*TINY, "logger=none"]}

    outputs = []
    for command in commands:
        script = command.split()[1]
        proc = run(command, tmp_path, extra.get(script, []))
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    assert (tmp_path / "cells" / "classes.txt").read_text() == "background\ncell\n"
    assert "wrote split 4: 4 labeled + 7 unlabeled images" in outputs[1]
    assert "warning" not in outputs[2]  # the label map is set: no 0/255 warning

    run_dir = tmp_path / "runs" / "cells"
    trained = json.loads((run_dir / "results.json").read_text())
    assert trained["dataset"] == "custom" and trained["steps"] == 3
    assert list(trained["per_class_iou"]) == ["background", "cell"]

    evaluated = json.loads((run_dir / "eval" / "results.json").read_text())
    assert evaluated["num_images"] == 1
    assert list(evaluated["per_class_iou"]) == ["background", "cell"]
    best = trained["best_val_miou"]
    assert evaluated["val_miou"] == pytest.approx(best, abs=0.01)
    for key in ("mean_dice", "pixel_accuracy", "cohen_kappa"):
        assert key in evaluated
    # the ground truth was read through the label map: both classes hold pixels
    confusion = np.loadtxt(
        run_dir / "eval" / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=(1, 2)
    )
    assert confusion.shape == (2, 2) and (confusion.sum(1) > 0).all()

    predicted = run_dir / "predict"
    names = sorted(p.name for p in (predicted / "index").glob("*.png"))
    assert names == [f"cell_{i:02d}.png" for i in range(12)]
    for name in names:
        index = np.asarray(Image.open(predicted / "index" / name))
        assert index.shape == (40, 48) and index.max() <= 1
        assert Image.open(predicted / "overlay" / name).mode == "RGB"
    assert json.loads((predicted / "predict.json").read_text())["class_names"] == [
        "background",
        "cell",
    ]


def test_masks_of_0_and_255_without_label_map_warn(tmp_path):
    cells_folder(tmp_path / "cells")
    (tmp_path / "cells" / "classes.txt").write_text("background\ncell\n")
    command = shlex.join(
        [
            "python",
            "train.py",
            "dataset=custom",
            f"dataset.root={tmp_path / 'cells'}",
            "split=4",
            "method=supervised",
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.max_steps=1",
        ]
    )
    proc = run(command, tmp_path, [*TINY[:-3], "trainer.val_check_interval=1", "logger=none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "dataset.label_map={255:1}" in warnings[0]
