"""SIGTERM and Ctrl+C: keep the work (``last.ckpt``), close the W&B run, record the interruption."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType

import lightning.pytorch as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.callbacks.record import find_run_record

REQUEUE_ENV = "DSUM_REQUEUE_ON_SIGTERM"


def requeue_on_sigterm(environ: dict[str, str] | None = None) -> bool:
    """Whether an interrupted run is marked *preempting*, which makes a W&B sweep requeue it for another agent
    (resuming from ``last.ckpt`` only with ``--ckpt_path last``). Inside a sweep SIGTERM is how hyperband and the
    UI stop a trial, so it is off there unless ``DSUM_REQUEUE_ON_SIGTERM=1`` (spot instances, SLURM preemption)."""
    env = os.environ if environ is None else environ
    if REQUEUE_ENV in env:
        return env[REQUEUE_ENV] == "1"
    return not env.get("WANDB_SWEEP_ID")


class _RequeueState:
    """SLURM's requeue signal, owned by dsum for the whole process (see :func:`take_slurm_requeue_signal`)."""

    asked = False  # the signal arrived
    trainer: L.Trainer | None = None  # the trainer that is fitting, if any


def _on_requeue_signal(signum: int, frame: FrameType | None) -> None:
    # Only a flag, nothing collective: Lightning's per-step check broadcasts rank 0's flag at the same point on
    # every rank and raises SIGTERMException everywhere (a collective from inside a signal handler could pair
    # with another rank's gradient all-reduce under NCCL and hang).
    _RequeueState.asked = True
    if _RequeueState.trainer is not None:
        _RequeueState.trainer._signal_connector.received_sigterm = True


def take_slurm_requeue_signal(requeue_signal: signal.Signals = signal.SIGUSR1) -> bool:
    """Under SLURM, handle its requeue warning (``sbatch --signal=SIGUSR1@120``) for the whole process, from model
    loading on, so Lightning's own handler (an ``hpc_ckpt`` saved mid-step, a new run on requeue) is never
    registered. During ``fit`` the run stops after the current batch. Returns whether the handler was installed."""
    _RequeueState.asked = False  # a new run: an earlier run's signal in this process is not this one's
    if not SLURMEnvironment.detect():
        return False
    signal.signal(requeue_signal, _on_requeue_signal)
    return True


class InterruptHandler(L.Callback):
    """On SIGTERM (a wandb agent, hyperband, a preempted node), Ctrl+C, or SLURM's requeue signal during ``fit``:
    rank 0 writes ``checkpoints/last.ckpt``, the W&B run is finished (marked preempting when
    :func:`requeue_on_sigterm`), and the run record says ``interrupted``. ``main.py`` then exits 143. After the
    SLURM requeue signal rank 0 also calls ``scontrol requeue``; the requeued job resumes from ``last.ckpt``.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _RequeueState.trainer = trainer
        if _RequeueState.asked:  # the signal came while the model loaded or the sanity check ran
            trainer._signal_connector.received_sigterm = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _RequeueState.trainer = None
        _RequeueState.asked = False  # outside `fit` the signal is ignored

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        _RequeueState.trainer = None
        requeue = _RequeueState.asked and isinstance(exception, SIGTERMException)
        _RequeueState.asked = False
        signal_name = ("SLURM requeue signal" if requeue
                       else "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM")
        last = self.save_last_checkpoint(trainer) if trainer.state.fn == "fit" else None
        self.finish_wandb(trainer, preempted=requeue_on_sigterm())
        record = find_run_record(trainer)
        if record is not None and record.record:
            saved = {"last_checkpoint": str(last)} if last else {}
            record.record.update(saved)
            record.set_status(trainer, "interrupted", signal=signal_name, **saved)
        rank_zero_info(f"dsum: {signal_name} received; run marked interrupted"
                       + (f", resume with --ckpt_path last ({last})" if last else ""))
        if requeue and trainer.is_global_zero:
            self.requeue_job()

    @staticmethod
    def requeue_job() -> None:
        """``scontrol requeue <job>``: SLURM stops this job and queues it again (no shell)."""
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):  # an array task: <array job>_<task>
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
        if not job:
            rank_zero_warn("dsum: SLURM requeue signal without SLURM_JOB_ID; not requeued")
            return
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            rank_zero_warn(f"dsum: scontrol requeue {job} failed ({error}); resubmit the job to resume")
            return
        if done.returncode == 0:
            rank_zero_info(f"dsum: SLURM job {job} requeued; it resumes from last.ckpt")
        else:
            rank_zero_warn(f"dsum: scontrol requeue {job} failed (exit {done.returncode}: {done.stderr.strip()}); "
                           "resubmit the job to resume")

    @staticmethod
    def save_last_checkpoint(trainer: L.Trainer) -> Path | None:
        """Write ``checkpoints/last.ckpt`` now (rank 0, no collective: other ranks may already be gone)."""
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not trainer.is_global_zero or trainer.global_step == 0:
            return None
        path = Path(checkpoint.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.strategy.checkpoint_io.save_checkpoint(trainer._checkpoint_connector.dump_checkpoint(), path)
        return path

    @staticmethod
    def finish_wandb(trainer: L.Trainer, preempted: bool) -> None:
        """Close the W&B run now, marked as preempted (resumable) rather than crashed."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None and trainer.is_global_zero:
                run = logger.experiment
                if preempted and hasattr(run, "mark_preempting"):
                    run.mark_preempting()
                run.finish(exit_code=1)
