"""Multi-process runs: how they are launched, what every rank seeds, and exact validation.

The supported launches are `torchrun --nproc_per_node=N train.py trainer=ddp ...` and srun's
tasks (`hydra/launcher=slurm`, one task per GPU, which take torchrun's variables from SLURM's):
one process per device, which Lightning joins. Lightning could also start the other
processes itself, but it does so by running the script again with the same command line, which
for a Hydra script means a second Hydra run (and, under `-m`, the whole sweep once more per
device); that combination is refused with the command to run instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import random
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from semiseg.checkpoints.preemption import launcher_signal
from semiseg.errors import ConfigError

T = TypeVar("T")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets its variables)."""
    return all(v in os.environ for v in TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def launched_by_srun() -> bool:
    """True in one of several tasks that srun started for this run (hydra/launcher=slurm with
    tasks_per_node > 1, or `srun python train.py` in a batch script); an interactive allocation
    (job name bash or interactive, as Lightning reads it) does not count."""
    return (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        and "SLURM_PROCID" in os.environ
        and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    )


def adopt_srun_tasks() -> None:
    """Give srun's tasks torchrun's variables, so they join as torchrun's processes do: the same
    rank (SLURM_PROCID), local rank and world size Lightning's SLURMEnvironment reads, and its
    address and port (the first node of the job, 15000 + the job id's last four digits)."""
    if launched_by_torchrun() or not launched_by_srun():
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment

    tasks = int(os.environ["SLURM_NTASKS"])
    nodes = int(os.environ.get("SLURM_NNODES", "1"))
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", str(tasks // nodes)).split("(")[0]
    environment = SLURMEnvironment()
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"],
        LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        WORLD_SIZE=str(tasks),
        LOCAL_WORLD_SIZE=str(int(per_node)),
        MASTER_ADDR=environment.main_address,
        MASTER_PORT=str(environment.main_port),
    )


def resolve_devices(trainer_cfg: dict, multirun: bool) -> dict:
    """Fill `devices`/`num_nodes` from torchrun's variables, or refuse Lightning-spawned ranks.

    Returns the trainer arguments to instantiate. Raises ConfigError with the command to run.
    """
    cfg = dict(trainer_cfg)
    adopt_srun_tasks()
    if launched_by_torchrun():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = int(os.environ["WORLD_SIZE"]) // per_node
        launcher = "srun" if launched_by_srun() else "torchrun"
        if cfg.get("strategy") is None:
            raise ConfigError(
                f"{launcher} started {os.environ['WORLD_SIZE']} processes but trainer=default "
                "trains one: add trainer=ddp to the command"
            )
        devices = cfg.get("devices", "auto")
        if devices in (None, "auto", -1, "-1"):
            cfg["devices"] = per_node
        elif _count(devices) != per_node:
            raise ConfigError(
                f"trainer.devices={devices} but {launcher} started {per_node} processes per node: "
                "drop trainer.devices (it follows --nproc_per_node, or srun's tasks per node)"
            )
        cfg["num_nodes"] = nodes
        return cfg
    requested = _count(cfg.get("devices", 1))
    if requested is None:  # "auto" / -1: every device Lightning finds
        gpu = cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda")
        requested = torch.cuda.device_count() if gpu and torch.cuda.is_available() else 1
    if requested > 1 or int(cfg.get("num_nodes", 1) or 1) > 1:
        sweep = " (and under -m every copy would run the whole sweep again)" if multirun else ""
        raise ConfigError(
            f"trainer.devices={cfg.get('devices')} would make Lightning re-launch this Hydra "
            f"script once per device{sweep}; start one process per device with torchrun instead: "
            f"torchrun --nproc_per_node={requested} train.py trainer=ddp ..."
        )
    if _count(cfg.get("devices", 1)) is None:
        cfg["devices"] = 1
    return cfg


def _count(devices) -> int | None:
    """How many devices a `devices` value asks for; None for "all of them" (auto, -1)."""
    if devices in (None, "auto", -1, "-1"):
        return None
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text)


def init_process_group(accelerator: str) -> None:
    """Join torchrun's process group before the Trainer does (it then reuses it), so that the
    ranks can agree on one run directory before anything is written."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shared_run_dir(out: Path) -> Path:
    """Rank 0's run directory on every rank: Hydra names it from the clock of each process, and
    two processes may read different seconds."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    box = [str(out)]
    dist.broadcast_object_list(box, src=0)
    shared = Path(box[0])
    if shared != out and out.is_dir():
        # This rank's own directory holds only Hydra's record of the config: drop it.
        if {p.name for p in out.iterdir()} <= {".hydra", "train.log"}:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
    return shared


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def in_rank_order(work: Callable[[], T]) -> T:
    """`work()` on rank 0, then on every other node's local rank 0, then on the remaining ranks:
    what the first one writes (toy data, generated splits) the others find done, and no two
    processes write the same files at once, on shared or node-local disks. An error is raised
    on every rank after all turns (the others meet it on their own turn, or find it fixed)."""
    if _world() == 1:
        return work()
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    turn = 0 if rank == 0 else 1 if local_rank == 0 else 2
    result, error = None, None
    for current in range(3):
        if current == turn:
            try:
                result = work()
            except Exception as err:  # raised after the barriers, so no rank waits for ever
                error = err
        dist.barrier()
    if error is not None:
        raise error
    return result


def from_rank_zero(decide: Callable[[], T]) -> T:
    """Rank 0's `decide()` on every rank (its error, too: raised on every rank)."""
    if _world() == 1:
        return decide()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (decide(), None)
        except Exception as err:
            box[0] = (None, err)
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def _end_loader_workers() -> None:
    """DataLoader workers ignore SIGTERM (below), and at exit multiprocessing ends the daemonic
    children still running (the workers of a persistent loader nobody shut down) with SIGTERM and
    then waits for them: the process would never exit. Registered after multiprocessing's own exit
    function, this runs first and ends them for good, as multiprocessing would have: daemonic
    children never outlive their parent."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if children and hasattr(signal, "SIGCHLD"):
        # torch's SIGCHLD handler would report each ended worker as a failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=10)


atexit.register(_end_loader_workers)


def worker_init(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM: torchrun and SLURM signal the whole process group, and
    the main process needs its workers for the batch it fetches before it stops (it ends them
    itself; they also leave when it dies). Lightning's seeding of workers is kept.

    SIGTERM is blocked from the fork until here (`SigtermSafeLoader`), so a signal that arrives
    while a worker starts is ignored too, not fatal."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if callable(signal.getsignal(launcher_signal())):  # the run's, inherited: not a worker's
        signal.signal(launcher_signal(), signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)  # the rank is this process's, as Lightning's own


class SigtermSafeLoader(DataLoader):
    """A DataLoader whose workers are forked with SIGTERM blocked (unblocked by `worker_init`
    once they ignore it). Without it, a SIGTERM to the process group in the few milliseconds
    between a worker's fork and its `worker_init` kills the worker, and the main process then
    fails with "DataLoader worker exited unexpectedly" instead of saving and exiting 143. The
    main process gets the signal as soon as its workers are started."""

    def _get_iterator(self):
        if self.num_workers == 0 or threading.current_thread() is not threading.main_thread():
            return super()._get_iterator()
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def seed_process(seed: int) -> None:
    """Seed Python, NumPy and torch in this process only. Unlike `seed_everything` it leaves
    PL_GLOBAL_SEED alone: the distributed samplers read it and must agree across ranks."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's random generators, in types a weights-only torch.load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict]:
    """Every rank's generators, indexed by rank (a collective: call it on all ranks)."""
    local = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, local)
    return states


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): with buffers not
    broadcast during training, and without SyncBatchNorm on CPUs, they drift apart per rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


class ShardSampler(DistributedSampler):
    """Rank r reads items r, r + N, r + 2N, ... of N ranks: every item exactly once.

    Lightning's default distributed sampler pads the last round with repeated items so that
    every rank has as many; summed over ranks, a validation confusion matrix would then count
    those images twice. Ranks may differ by one item here, which validation allows (buffers are
    not broadcast in forward passes, so no rank waits for another inside a step).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class RankSeed(Callback):
    """Seed every rank with `seed + rank` when fitting starts: different augmentations and CutMix
    boxes per rank in the step (the data's own draws come from per-image seeds, data/sampling.py).

    It runs in `setup`, after Lightning's DDP strategy has re-seeded every process with the same
    global seed, and before a resumed run restores each rank's saved generators. The model is
    already built by then, and DDP starts every rank from rank 0's weights anyway.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            seed_process(self.seed + trainer.global_rank)
