"""docs/quickstart.md, command for command and nothing added: the demo folder of grayscale images
with binary masks stored as 0/255 -> split -> train.py -> eval.py -> predict.py, at the CPU
settings the page prints; the GPU block's overrides compose."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from cli import REPO
from hydra import compose, initialize_config_dir
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.data.prepare import demo_cells

DOC = REPO / "docs" / "quickstart.md"


def quickstart_commands(name: str) -> list[str]:
    """The commands of the page's `<!-- quickstart: name -->` block, continuation lines joined."""
    text = DOC.read_text()
    block = re.search(rf"<!-- quickstart: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert block, f"{DOC} has no '{name}' quickstart block"
    joined = block.group(1).replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip()]


def run(command: str, cwd) -> subprocess.CompletedProcess:
    """One line of the page, from `cwd`; python scripts are the repository's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    words = shlex.split(command, comments=True)
    if words[0] != "python":
        return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    words[0] = sys.executable
    if words[1].endswith(".py"):
        words[1] = str(REPO / words[1])
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_grayscale_images_load_as_rgb(tmp_path):
    demo_cells.write(tmp_path / "cells", masked=1, unmasked=0)
    path = tmp_path / "cells" / "images" / "cell_00.png"
    assert Image.open(path).mode == "L"
    image = tf.load_image(path)
    assert image.mode == "RGB"
    channels = np.asarray(image)
    assert (channels[..., 0] == channels[..., 1]).all() and (
        channels[..., 1] == channels[..., 2]
    ).all()
    assert (channels[..., 0] == np.asarray(Image.open(path))).all()


def test_demo_cells_are_binary_masks_as_tools_write_them(tmp_path):
    demo_cells.write(tmp_path / "cells", masked=3, unmasked=2)
    masks = sorted((tmp_path / "cells" / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["cell_00.png", "cell_01.png", "cell_02.png"]
    assert len(list((tmp_path / "cells" / "images").glob("*.png"))) == 5
    for path in masks:
        assert set(np.unique(np.asarray(Image.open(path)))) == {0, 255}


def test_the_gpu_block_composes():
    train, evaluate, predict = quickstart_commands("gpu")
    words = shlex.split(train)
    assert words[0] == "HF_HUB_OFFLINE=0" and words[1:3] == ["python", "train.py"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=words[3:])
    assert cfg.model.pretrained == "imagenet" and cfg.model.encoder == "resnet101"
    assert cfg.trainer.precision == "fast" and cfg.dataset.name == "custom"
    assert evaluate.split()[:2] == ["python", "eval.py"]
    assert predict.split()[:2] == ["python", "predict.py"]


@pytest.mark.slow  # about 2 min on one core: the page's five commands at its CPU settings
def test_the_quickstart_as_printed_on_the_demo_folder(tmp_path):
    (demo,) = quickstart_commands("demo-data")
    commands = quickstart_commands("custom")
    assert len(commands) == 5
    assert [c.split()[1] for c in commands[1:]] == ["-m", "train.py", "eval.py", "predict.py"]

    outputs = []
    for command in [demo, *commands]:
        proc = run(command, tmp_path)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    assert (tmp_path / "cells" / "classes.txt").read_text() == "background\ncell\n"
    assert "wrote split 4: 4 labeled + 46 unlabeled images" in outputs[2]
    train = outputs[3]
    assert "warning" not in train  # the label map is set: no 0/255 warning
    assert "backbone resnet18: scratch (random initialisation)" in train
    assert re.search(
        r"expected wall time: .* for the \d+ steps left of trainer.max_steps=60", train
    )
    assert "step 60/60" in train and "Epoch" not in train  # the step bar

    run_dir = tmp_path / "runs" / "cells"
    trained = json.loads((run_dir / "results.json").read_text())
    assert trained["dataset"] == "custom" and trained["steps"] == 60
    assert list(trained["per_class_iou"]) == ["background", "cell"]
    assert trained["init"] == {"backbone": "scratch"}

    evaluated = json.loads((run_dir / "eval" / "results.json").read_text())
    assert evaluated["num_images"] == 10
    assert list(evaluated["per_class_iou"]) == ["background", "cell"]
    # eval.py scores in fp32; the training's validation ran at the run's precision: equal to
    # rounding in fp32, within bf16's rounding of the logits where `fast` resolved to bf16
    # (a CPU with native bf16 units: measured 0.03 apart on a Xeon with AMX)
    tolerance = 0.01 if trained["precision"] in ("32", "32-true") else 0.5
    assert evaluated["val_miou"] == pytest.approx(trained["best_val_miou"], abs=tolerance)
    # it learns the cells (the page's figures: mIoU 84.04, cell Dice 83.47 on one thread)
    assert evaluated["per_class_dice"]["cell"] > 60
    for key in ("mean_dice", "pixel_accuracy", "cohen_kappa"):
        assert key in evaluated
    # the ground truth was read through the label map: both classes hold pixels
    confusion = np.loadtxt(
        run_dir / "eval" / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=(1, 2)
    )
    assert confusion.shape == (2, 2) and (confusion.sum(1) > 0).all()

    predicted = run_dir / "predict"
    names = sorted(p.name for p in (predicted / "index").glob("*.png"))
    assert names == [f"cell_{i:02d}.png" for i in range(60)]
    for name in names:
        index = np.asarray(Image.open(predicted / "index" / name))
        assert index.shape == (80, 96) and index.max() <= 1
        assert Image.open(predicted / "overlay" / name).mode == "RGB"
    assert json.loads((predicted / "predict.json").read_text())["class_names"] == [
        "background",
        "cell",
    ]
