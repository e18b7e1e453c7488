"""CSS's mix of the unlabeled batch gathered from all ranks (augment/reco.py `mix_across_ranks`)
against a transcription of the public `generate_cut_gather_3` (tests/public_css.py), on two gloo
ranks on the CPU and on one process."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semiseg.augment.mixing import Mixed, half_area_boxes
from semiseg.augment.reco import mix_across_ranks
from semiseg.methods.css import CSS

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import TINY, end_group, start_torchrun  # noqa: E402
from public_css import public_cut_gather  # noqa: E402

N, H, W = 3, 8, 10


def _views(rank):
    """Rank `rank`'s batch: image k holds the value 10 rank + k + 1 (labels too, the second
    view's labels 100 more, confidences / 100), one ignored row on rank 1."""
    values = torch.arange(N, dtype=torch.float) + 10 * rank + 1
    images = values.view(N, 1, 1, 1).expand(N, 3, H, W).clone()
    images[:, 1] += torch.linspace(0, 1, W)  # not constant across the width
    labels = values.long().view(N, 1, 1).expand(N, H, W).clone()
    ignore = torch.zeros(N, H, W, dtype=torch.long)
    if rank == 1:
        ignore[0, 0] = 255
    first = Mixed(images, labels, labels.float() / 100, ignore)
    second = Mixed(images, labels + 100, (labels + 100).float() / 100, ignore)
    return first, second


def _public(rank, world, seed):
    """The transcription on the same masks: the cutmix boxes drawn for the whole gathered batch
    from the rank's generator, 1 outside the box (image i keeps its own pixels)."""
    boxes = half_area_boxes(world * N, H, W, torch.Generator().manual_seed(seed))
    batches = []
    for r in range(world):
        a, b = _views(r)
        batches.append((a.images, a.labels, b.labels, a.conf, b.conf, a.ignore))
    return public_cut_gather(batches, rank, 1 - boxes.float())


def _rank(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    views = _views(rank)
    seed = 7 + rank  # each rank draws its own masks, as the public code
    gathered = mix_across_ranks(views, "cutmix", torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)  # the step's draws: torch's global generator
    via_step = CSS.mixed(SimpleNamespace(mix_gather=True, mix_mode="cutmix"), views)
    torch.manual_seed(seed)
    own = CSS.mixed(SimpleNamespace(mix_gather=False, mix_mode="cutmix"), views)
    saved = {"gathered": gathered, "via_step": via_step, "own": own, "seed": seed}
    torch.save(saved, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _compare(ours, public):
    a, b = ours
    image, label1, label2, conf1, conf2, ignore = public
    assert torch.equal(a.images, image) and torch.equal(b.images, image)
    assert torch.equal(a.labels, label1.long()) and torch.equal(b.labels, label2.long())
    assert torch.equal(a.conf, conf1) and torch.equal(b.conf, conf2)
    assert torch.equal(a.ignore, ignore.long()) and torch.equal(b.ignore, a.ignore)


@pytest.mark.slow  # two spawned processes: about 30 s on a busy 2-core machine
def test_two_ranks_mix_the_gathered_batch_as_public(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(_rank, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        _compare(saved["gathered"], _public(rank, 2, saved["seed"]))
        _compare(saved["via_step"], _public(rank, 2, saved["seed"]))  # CSS's step mixes so
        # image k takes its partner from rank 0's image (k + 1) mod 3 (the public index: mod the
        # batch of one rank), on rank 1 too
        for k, labels in enumerate(saved["gathered"][0].labels):
            assert {int(v) for v in labels.unique()} == {10 * rank + k + 1, (k + 1) % N + 1}
        # mix_gather=false: this rank's batch alone, image i with image i + 1
        for k, labels in enumerate(saved["own"][0].labels):
            assert {int(v) for v in labels.unique()} == {
                10 * rank + k + 1,
                10 * rank + (k + 1) % N + 1,
            }


def test_one_process_mixes_its_batch_as_public():
    views = _views(0)
    ours = mix_across_ranks(views, "cutmix", torch.Generator().manual_seed(3))
    _compare(ours, _public(0, 1, 3))


@pytest.mark.slow  # a real two-rank training under torchrun: about a minute
def test_css_trains_on_two_ranks_under_torchrun(tmp_path):
    """train.py with trainer=ddp on two gloo ranks: the step's all-gather of the unlabeled batch
    (images, both spaces' labels and confidences, the ignore map) meets on both ranks."""
    run_dir = tmp_path / "run"
    overrides = [f"dataset.root={tmp_path / 'toy'}", *TINY, f"hydra.run.dir={run_dir}"]
    log_path = tmp_path / "torchrun.log"
    with open(log_path, "w") as log:
        proc = start_torchrun(
            "train.py", "trainer=ddp", "method=css", "method.num_queries=8",
            "method.num_negatives=16", *overrides, log=log,
        )  # fmt: skip
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            end_group(proc)
            tail = log_path.read_text()[-2000:]
            pytest.fail(f"the two ranks did not finish in 300 s (an unmatched collective?): {tail}")
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 3 and results["method"] == "css"
