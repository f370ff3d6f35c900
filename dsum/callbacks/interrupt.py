"""SIGTERM and Ctrl+C: keep the work (``last.ckpt``), close the W&B run, record the interruption."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.callbacks.record import find_run_record

REQUEUE_ENV = "DSUM_REQUEUE_ON_SIGTERM"


def requeue_on_sigterm(environ: dict[str, str] | None = None) -> bool:
    """Whether an interrupted run is marked *preempting*, which makes a W&B sweep requeue it for another agent.

    Outside a sweep it only labels the run. Inside one, the agent's own SIGTERM is how hyperband and the UI
    stop a trial, and a requeued trial would run again, so it is off unless ``DSUM_REQUEUE_ON_SIGTERM=1``
    (spot instances, SLURM preemption). The requeued run resumes from ``last.ckpt`` only if given
    ``--ckpt_path last``.
    """
    env = os.environ if environ is None else environ
    if REQUEUE_ENV in env:
        return env[REQUEUE_ENV] == "1"
    return not env.get("WANDB_SWEEP_ID")


class InterruptHandler(L.Callback):
    """On SIGTERM (a wandb agent stopping the run, hyperband, a preempted node) or Ctrl+C during ``fit``: rank 0
    writes ``checkpoints/last.ckpt``, the W&B run is finished (marked preempting when :func:`requeue_on_sigterm`),
    and the run record says ``interrupted``. ``main.py`` then exits 143."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        signal_name = "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
        fitting = trainer.state.fn is not None and trainer.state.fn.value == "fit"
        last = self.save_last_checkpoint(trainer) if fitting else None
        self.finish_wandb(trainer, preempted=requeue_on_sigterm())
        record = find_run_record(trainer)
        if record is not None and record.record:
            if last:
                record.record["last_checkpoint"] = str(last)
            record.set_status(trainer, "interrupted", signal=signal_name,
                              **({"last_checkpoint": str(last)} if last else {}))
        rank_zero_info(f"dsum: {signal_name} received; run marked interrupted"
                       + (f", resume with --ckpt_path last ({last})" if last else ""))

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
