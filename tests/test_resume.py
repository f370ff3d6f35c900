"""Exact resume: a run interrupted mid-epoch (SIGTERM, or a hard kill after a step-interval ``last.ckpt``) and
resumed with ``--ckpt_path last`` trains on the same batches, draws the same random numbers and ends with the
same weights and metrics as an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.cli import DsumCLI
from dsum.data.batching import DialogueBatchSampler, ResumableDataLoader
from tests.conftest import REPO, SAMPLE

EPOCH_BATCHES = 6  # batches per epoch (trainer.limit_train_batches)
EPOCHS = 2
SAVE_EVERY = 4  # last_checkpoint.every_n_train_steps


class SimulatedKill(BaseException):
    """Ends `fit` like ``kill -9``: nothing of dsum's interruption handling writes a checkpoint."""


class BatchLog(L.Callback):
    """Logs the example indices of every training batch. At step ``stop_at`` it sends SIGTERM (``sigterm``) or
    simulates a kill after the batch (``kill``) or at the end of the epoch, after its validation was recorded
    and before ``last.ckpt`` is written (``kill_at_epoch_end``)."""

    def __init__(self, stop_at: int | None = None, how: str = "") -> None:
        self.batches: list[list[int]] = []
        self.losses: list[float] = []
        self.stop_at, self.how = stop_at, how

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self.stop_at and self.how == "kill_at_epoch_end":
            raise SimulatedKill()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batches.append(batch["index"].tolist())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))
        if trainer.global_step != self.stop_at:
            return
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: stop after this batch
        elif self.how == "sigusr1":
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's requeue warning (sbatch --signal=SIGUSR1@90)
        elif self.how == "kill":
            raise SimulatedKill()


def fit(tiny: Path, run_dir: Path, log: BatchLog, *extra: str) -> DsumCLI:
    args = [
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
        f"--model.pretrained={tiny}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.cache_dir={run_dir.parent / 'cache'}",
        "--data.batch_size=8", "--data.val_subset=4", "--model.generation.max_new_tokens=4",
        f"--trainer.max_epochs={EPOCHS}", f"--trainer.limit_train_batches={EPOCH_BATCHES}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--last_checkpoint.every_n_train_steps={SAVE_EVERY}",
        *extra,
    ]
    return DsumCLI(args=args, extra_callbacks=[log])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights training ended with: ``last.ckpt`` is written at the end of the last epoch. (After ``fit`` the
    model in memory holds the best checkpoint's weights, loaded for the export.)"""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def history(run_dir: Path) -> list[dict[str, float]]:
    return json.loads((run_dir / "run.json").read_text())["metrics_history"]


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory) -> tuple[BatchLog, dict[str, torch.Tensor], list[dict[str, float]]]:
    run_dir = tmp_path_factory.mktemp("resume") / "reference"
    log = BatchLog()
    cli = fit(tiny_models["bart"], run_dir, log)
    assert cli.trainer.global_step == EPOCHS * EPOCH_BATCHES
    return log, final_weights(run_dir), history(run_dir)


def assert_same_run(batches: list[list[int]], losses: list[float], run_dir: Path, reference) -> None:
    """Same batches in the same order, the same training losses step by step (dropout draws included), the
    same final weights and the same validation metrics as the uninterrupted run."""
    ref_log, ref_weights, ref_history = reference
    assert batches == ref_log.batches
    assert losses == pytest.approx(ref_log.losses, rel=1e-5, abs=1e-6)
    final = final_weights(run_dir)
    assert final.keys() == ref_weights.keys()
    for name, value in final.items():
        torch.testing.assert_close(value, ref_weights[name], rtol=1e-5, atol=1e-6, msg=name)
    got = history(run_dir)
    assert [(h["epoch"], h["step"]) for h in got] == [(h["epoch"], h["step"]) for h in ref_history]
    for mine, theirs in zip(got, ref_history):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tiny_models, tmp_path, reference) -> None:
    run_dir = tmp_path / "run"
    stop = EPOCH_BATCHES + 2  # epoch 1, batch 2: mid-epoch, off the step interval
    first = BatchLog(stop_at=stop, how="sigterm")
    with pytest.raises(SIGTERMException):
        fit(tiny_models["bart"], run_dir, first)
    assert len(first.batches) == stop
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    # The best-so-far score is in the checkpoint, so `val/rouge_mean_best` does not restart after the resume.
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == stop
    assert float(last["state_dict"]["val_rouge_best.max_value"]) == pytest.approx(
        record["metrics_history"][0]["val/rouge_mean"])

    second = BatchLog()
    cli = fit(tiny_models["bart"], run_dir, second, "--ckpt_path=last")
    assert cli.trainer.global_step == EPOCHS * EPOCH_BATCHES
    assert_same_run(first.batches + second.batches, first.losses + second.losses, run_dir, reference)
    assert cli.model.val_rouge_best.compute() == pytest.approx(max(h["val/rouge_mean"] for h in reference[2]))


@pytest.mark.slow
@pytest.mark.parametrize(("how", "kill_at", "saved_at"), [
    # One step after the step-interval write at 2 * SAVE_EVERY, in epoch 1.
    ("kill", 2 * SAVE_EVERY + 1, 2 * SAVE_EVERY),
    # After epoch 0's validation is in run.json but before its last.ckpt: the record counts more than the
    # checkpoint holds; the resumed run validates that point again and the record keeps it once.
    ("kill_at_epoch_end", EPOCH_BATCHES, SAVE_EVERY),
])
def test_kill_then_resume_equals_uninterrupted(tiny_models, tmp_path, reference, how: str, kill_at: int,
                                               saved_at: int) -> None:
    run_dir = tmp_path / "run"
    first = BatchLog(stop_at=kill_at, how=how)
    with pytest.raises(SimulatedKill):
        fit(tiny_models["bart"], run_dir, first)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == saved_at
    if how == "kill_at_epoch_end":
        assert [h["step"] for h in history(run_dir)] == [EPOCH_BATCHES]

    second = BatchLog()
    cli = fit(tiny_models["bart"], run_dir, second, "--ckpt_path=last")
    assert cli.trainer.global_step == EPOCHS * EPOCH_BATCHES
    # The work after the checkpoint is lost and done again; nothing else repeats.
    assert_same_run(first.batches[:saved_at] + second.batches, first.losses[:saved_at] + second.losses, run_dir,
                    reference)


SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "dsum", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


@pytest.mark.slow
def test_slurm_requeue_signal_then_requeued_job_equals_uninterrupted(tiny_models, tmp_path, reference,
                                                                      monkeypatch, request) -> None:
    """Under SLURM, Lightning's default SLURMEnvironment(auto_requeue=True) would save an hpc checkpoint inside the
    signal handler, mid-step, and start the requeued job as a new run. dsum stops after the batch, writes
    last.ckpt, requeues with `scontrol`, and the requeued job (same command line) resumes from last.ckpt."""
    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    bin_dir = tmp_path / "bin"  # a fake scontrol that records its arguments
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    previous = signal.getsignal(signal.SIGUSR1)
    request.addfinalizer(lambda: signal.signal(signal.SIGUSR1, previous))  # dsum takes it for the process

    run_dir = tmp_path / "run"
    stop = EPOCH_BATCHES + 2
    first = BatchLog(stop_at=stop, how="sigusr1")
    with pytest.raises(SIGTERMException):
        fit(tiny_models["bart"], run_dir, first)
    assert len(first.batches) == stop
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's handler never ran
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["history"][-1]["signal"] == "SLURM requeue signal"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == stop

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job: the same command, no --ckpt_path
    second = BatchLog()
    cli = fit(tiny_models["bart"], run_dir, second)
    assert cli.trainer.global_step == EPOCHS * EPOCH_BATCHES
    assert_same_run(first.batches + second.batches, first.losses + second.losses, run_dir, reference)
    resumed = json.loads((run_dir / "run.json").read_text())
    assert resumed["run_id"] == record["run_id"] and resumed["status"] == "completed"
    assert resumed["history"][-1]["resumed_from"]["global_step"] == stop


def test_last_checkpoint_written_every_epoch_and_step_interval(tiny_models, tmp_path) -> None:
    """A flat or falling metric does not freeze last.ckpt: it follows the steps and the epoch ends."""
    run_dir = tmp_path / "run"
    saved: list[int] = []

    class Saves(L.Callback):
        def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
            saved.append(checkpoint["global_step"])

    cli = DsumCLI(args=[
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), f"--model.pretrained={tiny_models['bart']}",
        f"--trainer.default_root_dir={run_dir}", f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}", f"--data.cache_dir={tmp_path / 'cache'}",
        "--data.batch_size=8", "--data.val_subset=2", "--model.generation.max_new_tokens=1",
        "--trainer.max_epochs=3", "--trainer.limit_train_batches=3", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--last_checkpoint.every_n_train_steps=2",
        # A metric that never improves after the first validation: the best checkpoint is written once.
        "--checkpoint.monitor=val/rouge_mean_best", "--checkpoint.mode=min",
    ], extra_callbacks=[Saves()])
    assert cli.trainer.global_step == 9
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 9 and last["epoch"] == 2
    assert sorted(set(saved)) == [2, 3, 4, 6, 8, 9]  # every 2 steps, and each epoch end (3, 6, 9)
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("last*")) == ["last.ckpt"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")


# ------------------------------------------------------------------------------------------ the sampler alone
LENGTHS = list(range(5, 105))


@pytest.mark.parametrize("mode", ["random", "length_grouped", "token_budget"])
def test_loader_resumes_after_the_batches_it_handed_out(mode: str) -> None:
    def loader() -> ResumableDataLoader:
        sampler = DialogueBatchSampler(LENGTHS, LENGTHS, mode=mode, batch_size=8, max_tokens=600, seed=3)
        return ResumableDataLoader(list(range(len(LENGTHS))), batch_sampler=sampler, collate_fn=lambda b: b)

    full = loader()
    full.batch_sampler.set_epoch(2)
    expected = list(full)

    interrupted = loader()
    interrupted.batch_sampler.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator) for _ in range(5)]
    state = interrupted.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 5

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.batch_sampler.set_epoch(2)  # what Lightning does at the start of the resumed epoch
    assert seen + list(resumed) == expected
    assert resumed.state_dict()["batches"] == len(expected)
    resumed.batch_sampler.set_epoch(3)  # the skip applies once, to the saved epoch only
    assert len(list(resumed)) == len(resumed.batch_sampler)


def test_loader_refuses_state_of_another_batching() -> None:
    sampler = DialogueBatchSampler(LENGTHS, LENGTHS, mode="random", batch_size=8)
    loader = ResumableDataLoader(list(range(len(LENGTHS))), batch_sampler=sampler, collate_fn=lambda b: b)
    with pytest.raises(ValueError, match="had 7 batches, this run's has 13.*data.batch_size"):
        loader.load_state_dict({"epoch": 0, "batches": 3, "num_batches": 7})
