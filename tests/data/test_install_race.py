"""Two independent processes asked for the same generated dataset on a fresh folder (a seed sweep
on a fresh clone): one generates it, the other waits for it and uses it; neither removes the
tree the other installed."""

import os
import subprocess
import sys
import time
from pathlib import Path

from semiseg.data import toy

SRC = Path(__file__).resolve().parents[2] / "src"

# Each process waits for the go file, then asks for the dataset, as train.py's setup does.
JOB = """
import sys, time
from pathlib import Path
from semiseg.data import {module} as generated
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
generated.ensure(Path(sys.argv[1]))
print("inode", Path(sys.argv[1]).stat().st_ino, flush=True)
"""


def _race(root: Path, module: str) -> list[str]:
    go = root.parent.parent / "go"  # outside the fresh data folder
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    jobs = [
        subprocess.Popen([sys.executable, "-c", JOB.format(module=module), str(root), str(go)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    time.sleep(3)  # both imported and waiting
    go.touch()
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (out, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def test_two_jobs_generate_the_toy_dataset_once(tmp_path):
    root = tmp_path / "data" / "toy"
    outputs = _race(root, "toy")
    assert sum(out.count("generating toy dataset") for out in outputs) == 1, outputs
    # both ended with the one tree installed (the same folder, not a second one renamed over it)
    inodes = {line for out in outputs for line in out.splitlines() if line.startswith("inode")}
    assert inodes == {f"inode {root.stat().st_ino}"}, (inodes, outputs)
    assert toy.is_current(root, 0, toy.DEFAULT_DOMAIN)
    assert sorted(p.name for p in root.parent.iterdir()) == [".toy.lock", "toy"]


def test_two_jobs_generate_the_toy_acdc_dataset_once(tmp_path):
    outputs = _race(tmp_path / "data" / "acdc", "acdc_toy")
    assert sum(out.count("generating toy ACDC dataset") for out in outputs) == 1, outputs
