"""A checkpoint file that carries code (a pickled object whose unpickling runs a function) is
refused in one line by eval.py, predict.py and train.py resume=, and its code never runs."""

import pathlib

import pytest
import torch
from cli import run_script
from PIL import Image


class RunsCode:
    """Unpickled, it calls pathlib.Path.touch(marker): the proof that the file's code ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.slow  # a process each (about 30 s on 2 busy cores)
@pytest.mark.parametrize("entry", ["eval.py", "predict.py", "train.py resume="])
def test_a_checkpoint_carrying_code_is_refused_in_one_line(entry, tmp_path, toy_root):
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "trap.ckpt"
    config = {"dataset": {"name": "toy"}, "method": {"name": "supervised"}}
    torch.save(
        {"semiseg": {"config": config, "class_names": ["a", "b"]}, "state_dict": {},
         "global_step": 1, "payload": RunsCode(marker)},
        checkpoint,
    )  # fmt: skip
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    if entry == "eval.py":
        proc = run_script("eval.py", f"ckpt_path={checkpoint}", run_dir)
    elif entry == "predict.py":
        proc = run_script(
            "predict.py", f"ckpt_path={checkpoint}", f"input={tmp_path / 'images'}",
            f"output={tmp_path / 'out'}",
        )  # fmt: skip
    else:
        proc = run_script(
            "train.py", f"dataset.root={toy_root}", "model.pretrained=scratch", "logger=none",
            f"resume={checkpoint}", run_dir,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(checkpoint) in lines[0] and "it carries code" in lines[0], lines[0]
    assert not marker.exists()  # the file's code never ran
    # the same file read without the guard does run it: the test's trap is real
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()
