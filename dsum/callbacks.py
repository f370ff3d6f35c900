"""Callbacks that leave a run's results on disk: run record, best-model export, submission CSV."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, EarlyStopping
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.files import atomic_write_dir, atomic_write_json, atomic_write_text, read_json
from dsum.secrets import redact, redact_text

RUN_RECORD = "run.json"  # fit; other stages write `<stage>.json` beside it (validate.json, ...)
BEST_MODEL_DIR = "best_model"
SWEEP_PARAMS_ENV = "DSUM_SWEEP_PARAMS"
OOM_HINT = (
    "out of memory: lower data.max_tokens (token_budget batching) or data.batch_size / "
    "data.eval_batch_size, and raise trainer.accumulate_grad_batches to keep the effective batch size"
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def stop_reason(trainer: L.Trainer) -> str | None:
    """Why training stopped early, as set by dsum's callbacks: ``pruned`` or ``interrupted`` (else None)."""
    return getattr(trainer, "dsum_stop_reason", None)


def request_stop(trainer: L.Trainer, reason: str) -> None:
    """Stop training cleanly at the next opportunity and record why (the run record's final status)."""
    trainer.dsum_stop_reason = reason  # type: ignore[attr-defined]
    trainer.should_stop = True


def _process_age_seconds() -> float | None:
    """Seconds since this process started (Linux/macOS via psutil), for the time-to-first-step figure."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class OptionalEarlyStopping(EarlyStopping):
    """Early stopping on ``monitor`` that is off unless ``patience`` is set.

    Args:
        monitor: Metric to watch.
        mode: ``max`` or ``min``.
        patience: Validation checks without improvement before stopping; ``None`` disables early stopping.
        min_delta: Smallest change that counts as an improvement.
    """

    def __init__(self, monitor: str = "val/rouge_mean", mode: str = "max", patience: int | None = None,
                 min_delta: float = 0.0) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience or 0, min_delta=min_delta)
        self.enabled = patience is not None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)


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


class RunOutputs(L.Callback):
    """Writes the run record (``run.json``) and exports the best checkpoint in Hugging Face format.

    The record holds the run id, W&B run/sweep ids and sweep parameters if any, the status of every
    stage (running, completed, interrupted, failed), best and final metrics, and paths. Rank 0 writes;
    every write is atomic.

    Args:
        export_best: After ``fit``, save the best checkpoint with ``save_pretrained`` into
            ``<run dir>/best_model`` (model, tokenizer, generation config).
    """

    def __init__(self, export_best: bool = True) -> None:
        self.export_best = export_best
        # Set by DsumCLI: the W&B run id (the agent's, a resumed run's, or a new one).
        self.run_id: str | None = None
        self.record: dict[str, Any] = {}
        self._stage = ""

    # ------------------------------------------------------------------------------ record
    @staticmethod
    def run_dir(trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    @staticmethod
    def record_path(run_dir: Path, stage: str) -> Path:
        """`run.json` for fit, `<stage>.json` for validate/test/predict, so stages never clobber each other."""
        return run_dir / (RUN_RECORD if stage == "fit" else f"{stage}.json")

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            atomic_write_json(self.record_path(self.run_dir(trainer), self._stage), redact(self.record))

    def _set_status(self, trainer: L.Trainer, status: str, **extra: Any) -> None:
        self.record["status"] = status
        self.record["history"][-1].update(status=status, ended_at=_now(), **extra)
        self._save(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum
        self._stage = stage
        path = self.record_path(self.run_dir(trainer), stage)
        previous = read_json(path) if trainer.is_global_zero and path.is_file() else {}
        sweep_params = json.loads(os.environ.get(SWEEP_PARAMS_ENV) or "{}")
        checkpoint = trainer.checkpoint_callback
        self.record = {
            **previous,
            "run_id": self.run_id or os.environ.get("WANDB_RUN_ID") or previous.get("run_id"),
            "run_dir": str(self.run_dir(trainer)),
            "config": str(self.run_dir(trainer) / "config.yaml"),
            "stage": stage,
            "status": "running",
            "wandb": {
                "run_id": self.run_id if trainer.loggers else None,
                "sweep_id": os.environ.get("WANDB_SWEEP_ID"),
                "project": os.environ.get("WANDB_PROJECT"),
                "mode": os.environ.get("WANDB_MODE", "online"),
            },
            "sweep_params": sweep_params or previous.get("sweep_params", {}),
            "monitor": getattr(checkpoint, "monitor", None) or "val/rouge_mean",
            "command": [sys.executable, *sys.argv],
            "world_size": trainer.world_size,
            "history": [*previous.get("history", []), {"stage": stage, "status": "running", "started_at": _now()}],
        }
        if stage != "fit":
            # Evaluation stages report this invocation's metrics only; fit accumulates across resumes.
            self.record.update(best_metric=None, final_metrics={}, metrics_history=[])
        self._save(trainer)

    def _record_metrics(self, trainer: L.Trainer, prefix: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        if not metrics:
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        history = [*self.record.get("metrics_history", []), entry]
        monitor = self.record["monitor"]
        scores = [h[monitor] for h in history if monitor in h]
        pick = min if getattr(trainer.checkpoint_callback, "mode", "max") == "min" else max
        self.record.update(
            final_metrics=metrics,
            metrics_history=history,
            global_step=trainer.global_step,
            best_metric=pick(scores) if scores else None,
        )
        self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record_metrics(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_metrics(trainer, "test/")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if "startup_seconds" not in self.record["history"][-1]:
            # Process start to first training step: what a sweep pays per trial before any learning.
            self.record["history"][-1]["startup_seconds"] = _process_age_seconds()
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        self.record["global_step"] = trainer.global_step
        if checkpoint is not None:
            self.record["best_checkpoint"] = checkpoint.best_model_path or None
            self.record["last_checkpoint"] = getattr(checkpoint, "last_model_path", None) or None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export_best and trainer.is_global_zero and stop_reason(trainer) != "interrupted":
            self.record["best_model"] = str(self.export(trainer, pl_module))

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        """Load the best checkpoint's weights (if any) and save them in Hugging Face format, atomically."""
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)
        return atomic_write_dir(self.run_dir(trainer) / BEST_MODEL_DIR, pl_module.export)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.record.get("status") == "running":
            self._set_status(trainer, stop_reason(trainer) or "completed")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self.record:
            return
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            # A wandb agent stopping the run, hyperband, a preempted node or Ctrl+C: keep the work.
            signal_name = "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            last = self._save_last_checkpoint(trainer) if self._stage == "fit" else None
            self._finish_wandb(trainer, preempted=requeue_on_sigterm())
            self._set_status(trainer, "interrupted", signal=signal_name,
                             **({"last_checkpoint": str(last)} if last else {}))
            rank_zero_info(f"dsum: {signal_name} received; run marked interrupted"
                           + (f", resume with --ckpt_path last ({last})" if last else ""))
            return
        message = redact_text(f"{type(exception).__name__}: {exception}")[:4000]
        hint = OOM_HINT if _is_oom(exception) else None
        if hint:
            rank_zero_warn(f"dsum: {hint}")
        self._set_status(trainer, "failed", error=message, **({"hint": hint} if hint else {}))

    def _save_last_checkpoint(self, trainer: L.Trainer) -> Path | None:
        """Write ``checkpoints/last.ckpt`` now (rank 0, no collective: other ranks may already be gone)."""
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not trainer.is_global_zero or trainer.global_step == 0:
            return None
        path = Path(checkpoint.dirpath or self.run_dir(trainer) / "checkpoints") / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.strategy.checkpoint_io.save_checkpoint(trainer._checkpoint_connector.dump_checkpoint(), path)
        self.record["last_checkpoint"] = str(path)
        return path

    @staticmethod
    def _finish_wandb(trainer: L.Trainer, preempted: bool) -> None:
        """Close the W&B run now, marked as preempted (resumable) rather than crashed."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None and trainer.is_global_zero:
                run = logger.experiment
                if preempted and hasattr(run, "mark_preempting"):
                    run.mark_preempting()
                run.finish(exit_code=1)


class SubmissionWriter(BasePredictionWriter):
    """Writes ``predict`` results as a submission CSV (``fname,summary``), one row per input row, in
    input order. Under DDP the ranks' predictions are gathered and de-duplicated by row index.

    Args:
        path: Output CSV; default ``<run dir>/submission.csv``.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path
        self.written: Path | None = None

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           predictions: Any, batch_indices: Any) -> None:
        rows = [row for batch in predictions for row in batch]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero:
            return
        by_index = {index: (fname, summary) for index, fname, summary in rows}
        expected = trainer.datamodule.splits["predict"].table.fnames
        missing = [expected[i] for i in range(len(expected)) if i not in by_index]
        if missing:
            raise RuntimeError(f"predictions missing for {len(missing)} rows, e.g. {missing[:5]}")
        frame = pd.DataFrame(
            [by_index[i] for i in range(len(expected))], columns=["fname", "summary"]
        )
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "submission.csv"
        buffer = io.StringIO()
        # The competition's sample_submission.csv layout: an unnamed 0..n-1 index column, then fname,summary.
        frame.to_csv(buffer)
        self.written = atomic_write_text(path, buffer.getvalue())
        print(f"dsum: wrote {len(frame)} summaries to {path}")
