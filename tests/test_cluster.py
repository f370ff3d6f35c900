"""Cluster launches, simulated: the ranks, devices and data shards a SLURM task gets (multi-node DDP on localhost
is in tests/test_ddp.py; SLURM preemption in tests/test_resume.py)."""

from __future__ import annotations

import re

import pytest

from dsum.cli import DsumCLI
from tests.conftest import sample_run_args

# Task 3 of `srun --nodes=2 --ntasks-per-node=2`: the second task on the second node.
SLURM_TASK = {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "dsum", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NODELIST": "node[1-2]"}


def test_a_slurm_task_gets_its_rank_device_and_data_shard(tiny_models, tmp_path, monkeypatch) -> None:
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cli = DsumCLI(args=[*sample_run_args("quickstart.yaml", tiny_models["bart"], tmp_path / "run",
                                               "--trainer.num_nodes=2", "--trainer.devices=2",
                                               "--trainer.strategy=ddp", "--trainer.accelerator=cpu")], run=False)
    trainer = cli.trainer
    assert type(trainer.strategy.cluster_environment).__name__ == "SLURMEnvironment"
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (3, 1, 1, 4)
    assert not trainer.is_global_zero  # so it writes no files and starts no W&B run
    data = cli.datamodule
    data.trainer = trainer
    data.setup("fit")
    sampler = data.train_dataloader().batch_sampler
    assert (sampler.num_replicas, sampler.rank) == (4, 3)
    shards = []
    for rank in range(4):
        monkeypatch.setattr(type(trainer), "global_rank", property(lambda self, r=rank: r))
        shards.append(list(data.train_dataloader().batch_sampler))
    every = {i for shard in shards for batch in shard for i in batch}
    assert every == set(range(len(data.splits["train"].dialogues)))  # every example, on some rank
    assert len({len(shard) for shard in shards}) == 1  # equal batch counts: no rank waits in a collective


@pytest.mark.parametrize("devices", ["auto", None])
def test_without_devices_a_run_takes_one_device(tiny_models, tmp_path, monkeypatch, devices) -> None:
    """Lightning's `devices=auto` would take every visible device (here 4 CPUs of a mocked count) and start DDP."""
    from lightning.pytorch.accelerators import CPUAccelerator

    monkeypatch.setattr(CPUAccelerator, "auto_device_count", staticmethod(lambda: 4))
    extra = ["--trainer.devices=auto"] if devices == "auto" else []
    cli = DsumCLI(args=[*sample_run_args("quickstart.yaml", tiny_models["bart"], tmp_path / "run",
                                               "--trainer.accelerator=cpu", *extra)], run=False)
    assert cli.trainer.num_devices == (4 if devices == "auto" else 1)


@pytest.mark.parametrize("gpus, workers, per_worker, expected", [
    (["0", "1", "2", "3"], 2, 2, ["0,1", "2,3"]),
    (["0", "1", "2", "3", "4"], 2, 2, ["0,1", "2,3"]),  # GPU 4 left over
    (["0", "1", "2", "3", "4"], 3, 2, ["0,1", "2,3", "0,1"]),  # more workers than groups: shared round robin
    (["4", "6", "7"], 3, 1, ["4", "6", "7"]),  # CUDA_VISIBLE_DEVICES ids, not positions
    (["0", "1"], 3, 1, ["0", "1", "0"]),
    ([], 2, 2, [None, None]),  # CPU only
])
def test_workers_get_disjoint_gpu_groups(gpus, workers, per_worker, expected) -> None:
    from dsum.sweep.workers import gpu_groups

    assert gpu_groups(gpus, workers, per_worker) == expected


@pytest.mark.parametrize("gpus, per_worker, message", [
    (["0", "1"], 3, "gpus_per_worker=3 but only 2 GPU(s) are visible (0,1)"),
    (["0"], 0, "gpus_per_worker must be >= 1, got 0"),
])
def test_impossible_gpu_groups_are_refused(gpus, per_worker, message) -> None:
    from dsum.sweep.workers import gpu_groups

    with pytest.raises(ValueError, match=re.escape(message)):
        gpu_groups(gpus, 2, per_worker)


def test_parallel_workers_are_pinned_to_their_groups(tmp_path, monkeypatch) -> None:
    """`run_workers` with 2 GPUs per worker on a fake 5-GPU host: each worker sees only its own pair."""
    import sys

    from dsum.sweep.workers import run_workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    show = [sys.executable, "-c", "import os; print('visible=' + os.environ['CUDA_VISIBLE_DEVICES'])"]
    results = run_workers([show, show], tmp_path / "logs", gpus_per_worker=2)
    assert [r.gpu for r in results] == ["0,1", "2,3"]
    assert [(tmp_path / "logs" / f"worker_{i}.log").read_text().strip() for i in (0, 1)] == \
        ["visible=0,1", "visible=2,3"]


def test_a_local_sweep_gives_each_trial_its_gpu_group(monkeypatch, tmp_path) -> None:
    """`dsum sweep local --workers 2 --gpus_per_worker 2` on a fake 4-GPU host; and a `parallel --engine local`
    worker (which sees only its group) gives all of it to its trial."""
    from dsum.sweep.local import LocalSweep, local_worker_command
    from tests.test_sweep_local import GRID, write_sweep

    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, GRID)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    engine = LocalSweep(sweep, count=1, workers=2, storage=None, max_consecutive_failures=1, gpus_per_worker=2)
    assert engine.gpus == ["0,1", "2,3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # inside a parallel worker
    assert LocalSweep(sweep, 1, 1, None, 1, gpus_per_worker=2).gpus == ["2,3"]
    assert local_worker_command(sweep, 1, None, 2)[-2:] == ["--gpus_per_worker", "2"]


def test_the_slurm_requeue_signal_during_validation_writes_no_hpc_checkpoint(tiny_models, tmp_path, monkeypatch,
                                                                            request) -> None:
    """Lightning's own requeue handler would save `hpc_ckpt_1.ckpt` into the run directory, which any later
    `validate`/`predict` under SLURM without --ckpt_path would silently load over the exported model."""
    import os
    import signal

    import lightning.pytorch as L

    from dsum.callbacks.interrupt import _on_requeue_signal

    for name, value in {**SLURM_TASK, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(name, value)
    previous = signal.getsignal(signal.SIGUSR1)
    request.addfinalizer(lambda: signal.signal(signal.SIGUSR1, previous))

    class SignalMidValidation(L.Callback):
        def on_validation_batch_end(self, trainer, *args) -> None:
            if not trainer.sanity_checking:
                os.kill(os.getpid(), signal.SIGUSR1)

    run_dir = tmp_path / "run"
    DsumCLI(args=["validate", *sample_run_args("quickstart.yaml", tiny_models["bart"], run_dir,
                                               "--data.val_subset=4", "--model.generation.max_new_tokens=2")],
            extra_callbacks=[SignalMidValidation()])
    assert signal.getsignal(signal.SIGUSR1) is _on_requeue_signal
    assert not list(run_dir.glob("hpc_ckpt_*"))
    assert (run_dir / "validate.json").is_file()
