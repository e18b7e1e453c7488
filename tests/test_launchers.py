"""SLURM through hydra-submitit-launcher: the composed launcher configs and the sbatch script they
make (no cluster here), srun's tasks as DDP ranks, the time-limit signal handed to submitit after
the checkpoint, and a real sweep through submitit's local launcher."""

import json
import os
import re
import signal
import time

import pytest
from cli import REPO, TINY, start_train, train_on_toy
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from semiseg.checkpoints.preemption import Preempted, Sigterm, launcher_signal
from semiseg.distributed import adopt_srun_tasks, launched_by_srun, resolve_devices

SUBMITIT_SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def launcher_params(cfg) -> dict:
    """hydra.launcher as the plugin passes it to submitit (its own keys left out)."""
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    for key in ("_target_", "submitit_folder", "name", "max_num_timeout"):
        params.pop(key)
    params["tasks_per_node"] = cfg.hydra.launcher.tasks_per_node  # resolved
    return params


def sbatch_script(cfg, folder, monkeypatch) -> str:
    """The batch script submitit would submit for this launcher config, built as the plugin
    builds its executor (shared keys as they are, the others prefixed with slurm_)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # srun is absent
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=cfg.hydra.launcher.max_num_timeout
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in shared else f"slurm_{k}": v for k, v in launcher_params(cfg).items()}
    )
    script = executor._executor._make_submission_file_text("python -m submitit X", "uid")
    print(script)
    return script


def test_slurm_launcher_one_task_per_gpu_signal_and_requeue(tmp_path, monkeypatch):
    cfg = composed("hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.gpus_per_node=4")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == SUBMITIT_SLURM
    assert launcher.gpus_per_node == 4 and launcher.tasks_per_node == 4 and launcher.nodes == 1
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s >= 120
    assert launcher.additional_parameters.requeue is True
    script = sbatch_script(cfg, tmp_path, monkeypatch)
    for line in (
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --nodes=1",
        "#SBATCH --requeue",
        f"#SBATCH --time={launcher.timeout_min}",
        # the signal submitit sends before the time limit is the one the run treats as SIGTERM
        f"#SBATCH --signal={launcher_signal().name.removeprefix('SIG')}@{launcher.signal_delay_s}",
    ):
        assert line in script.splitlines(), f"{line} not in\n{script}"
    assert "srun" in script  # every task is started by srun: SLURM_PROCID is its rank


def test_slurm_example_experiment_composes(tmp_path, monkeypatch):
    cfg = composed("experiment=unimatch_pascal_slurm", "dataset.root=VOC2012")
    assert cfg.hydra.launcher._target_ == SUBMITIT_SLURM
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4
    assert cfg.resume == "auto" and cfg.trainer.strategy is not None
    assert cfg.trainer.devices == "auto"  # follows srun's tasks per node
    assert cfg.method.name == "unimatch" and cfg.dataset.name == "pascal"
    assert cfg.data.batch_size * cfg.hydra.launcher.gpus_per_node == cfg.optim.reference_batch
    assert "#SBATCH --ntasks-per-node=4" in sbatch_script(cfg, tmp_path, monkeypatch)


def test_local_stand_in_composes():
    cfg = composed("hydra/launcher=slurm_local")
    assert cfg.hydra.launcher._target_ == SUBMITIT_LOCAL
    assert cfg.hydra.launcher.tasks_per_node == 1


@pytest.fixture
def srun_task(monkeypatch):
    """The variables srun gives task 3 of a 2-node job with 4 tasks per node (and none of
    torchrun's: set to "" and deleted, so that monkeypatch also removes what the test adds)."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"):  # fmt: skip
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    slurm = {
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_NNODES": "2",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "3",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NAME": "train",
        "SLURM_NODELIST": "gpu[07-08]",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)


def test_srun_tasks_join_as_ddp_ranks(srun_task):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    assert launched_by_srun()
    trainer = {"strategy": {"_target_": "DDPStrategy"}, "devices": "auto"}
    resolved = resolve_devices(trainer, multirun=True)
    assert resolved["devices"] == 4 and resolved["num_nodes"] == 2
    environment = SLURMEnvironment()  # what Lightning will use: the same ranks and address
    assert os.environ["RANK"] == str(environment.global_rank()) == "3"
    assert os.environ["LOCAL_RANK"] == str(environment.local_rank()) == "3"
    assert os.environ["WORLD_SIZE"] == str(environment.world_size()) == "8"
    assert os.environ["LOCAL_WORLD_SIZE"] == "4"
    assert os.environ["MASTER_ADDR"] == environment.main_address == "gpu07"
    assert os.environ["MASTER_PORT"] == str(environment.main_port) == str(15000 + 3456)
    environment.validate_settings(num_devices=4, num_nodes=2)


def test_srun_tasks_need_trainer_ddp(srun_task):
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match="srun started 8 processes but trainer=default"):
        resolve_devices({"devices": 1}, multirun=True)


def test_interactive_allocation_is_not_a_launch(srun_task, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    adopt_srun_tasks()
    assert not launched_by_srun() and "RANK" not in os.environ


def test_launcher_signal_stops_at_a_safe_point_then_goes_to_submitit():
    """submitit's requeue handler is taken over while the run trains: the signal is recorded
    (the run stops at the next step boundary with its checkpoint), then handed to submitit."""
    sig = launcher_signal()
    calls = []
    previous = signal.signal(sig, lambda signum, frame: calls.append(signum))
    try:
        with Sigterm() as sigterm:
            sigterm.deferred = True  # training is set up
            os.kill(os.getpid(), sig)
            assert sigterm.received and sigterm.signal_name == sig.name and calls == []
            sigterm.pass_on()
            assert calls == [sig]
        assert calls == [sig]
        # before training (nothing to save): the run stops at once, then the same hand-over
        with pytest.raises(Preempted), Sigterm() as sigterm:
            os.kill(os.getpid(), sig)
        assert sigterm.signal_name == sig.name
    finally:
        signal.signal(sig, previous)


def test_sigterm_is_not_passed_on_and_no_handler_means_no_take_over():
    sig = launcher_signal()
    calls = []
    previous = signal.signal(sig, lambda signum, frame: calls.append(signum))
    try:
        with Sigterm() as sigterm:
            sigterm.deferred = True
            os.kill(os.getpid(), signal.SIGTERM)
            sigterm.pass_on()
            assert sigterm.signal_name == "SIGTERM" and calls == []
        signal.signal(sig, signal.SIG_DFL)  # not under submitit: the signal is left alone
        with Sigterm():
            assert signal.getsignal(sig) == signal.SIG_DFL
    finally:
        signal.signal(sig, previous)


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path, toy_root):
    sweep = tmp_path / "sweep"
    train_on_toy(
        toy_root,
        "-m",
        "hydra/launcher=slurm_local",
        "method=supervised",
        "seed=0,1",
        "resume=auto",
        f"hydra.sweep.dir={sweep}",
    )
    runs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert [p.name for p in runs] == ["0_supervised_toy_20_s0", "1_supervised_toy_20_s1"]
    for seed, run in enumerate(runs):
        results = json.loads((run / "results.json").read_text())
        assert results["seed"] == seed and results["steps"] == 3
        assert (run / "checkpoints" / "last.ckpt").is_file()
    # submitit's own records: one folder of logs and pickles per job, each a separate process
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, sorted(p.name for p in (sweep / ".submitit").rglob("*"))
    # the local executor's job id is the job's process id: two ids, each in its own folder
    job_ids = []
    for log in logs:
        found = re.findall(r"Starting with JobEnvironment\(job_id=(\d+),", log.read_text())
        assert found == [log.parent.name], (log, found)
        job_ids += found
    assert len(set(job_ids)) == 2 and str(os.getpid()) not in job_ids


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (from /proc), children first."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _submitit_task(pid: int) -> int | None:
    for child in _descendants(pid):
        try:
            if b"submitit.core._submit" in open(f"/proc/{child}/cmdline", "rb").read():
                return child
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_the_job_continues(tmp_path, toy_root):
    """submitit's time-limit signal to a training job (sent here by hand, as submitit's local
    executor sends it): the run stops at a step boundary with last.ckpt, submitit requeues the
    job, and the requeued job continues from that checkpoint to the end (resume=auto)."""
    sweep = tmp_path / "sweep"
    log_path = tmp_path / "sweep.log"
    settings = [*TINY[:-3], "trainer.max_steps=12", "trainer.val_check_interval=4"]
    with open(log_path, "w") as log:
        proc = start_train(
            "-m",
            "hydra/launcher=slurm_local",
            "hydra.launcher.timeout_min=30",  # the signal comes from the test, not the timer
            "method=supervised",
            "resume=auto",
            f"dataset.root={toy_root}",
            *settings,
            "logger=none",
            f"hydra.sweep.dir={sweep}",
            log=log,
        )
        try:
            job_log = None
            deadline = time.time() + 300
            while job_log is None or "step 4: val mIoU" not in job_log.read_text():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "the job never validated"
                logs = list((sweep / ".submitit").glob("*/*_0_log.out"))
                job_log = logs[0] if logs else None
                time.sleep(0.05)
            task = _submitit_task(proc.pid)
            assert task is not None
            os.kill(task, launcher_signal())
            assert proc.wait(timeout=400) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = job_log.read_text()
    stopped = re.search(rf"preempted: {launcher_signal().name} at step (\d+)", text)
    assert stopped, text[-3000:]
    step = int(stopped.group(1))
    assert 4 <= step < 12
    requeued = text.index("Requeued job")  # submitit's handler, after the checkpoint
    assert stopped.start() < requeued < text.index(f"resuming from {sweep}")
    results = json.loads((sweep / "0_supervised_toy_20_s0" / "results.json").read_text())
    assert results["steps"] == 12 and results["resumed_from"].endswith("last.ckpt")
    assert [v["step"] for v in results["val_history"]] == [4, 8, 12]
