"""The run record (``run.json``): what a run did, as the sweep summaries and the registry read it."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.constants import MONITOR
from dsum.infra.files import atomic_write_json, read_json
from dsum.infra.secrets import redact, redact_text

RUN_RECORD = "run.json"  # fit; other stages write `<stage>.json` beside it (validate.json, ...)
# The one handoff from a sweep to the run record: the trial's parameters (JSON, secrets masked), set by the
# sweep layer before LightningCLI starts, read here. An environment variable, so DDP workers see it too.
SWEEP_PARAMS_ENV = "DSUM_SWEEP_PARAMS"
OOM_HINT = (
    "out of memory: lower data.max_tokens (token_budget batching) or data.batch_size / "
    "data.eval_batch_size, and raise trainer.accumulate_grad_batches to keep the effective batch size"
)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def stop_reason(trainer: L.Trainer) -> str | None:
    """Why training stopped early, as set by dsum's callbacks: ``pruned`` or ``interrupted`` (else None)."""
    return getattr(trainer, "dsum_stop_reason", None)


def request_stop(trainer: L.Trainer, reason: str) -> None:
    """Stop training cleanly at the next opportunity and record why (the run record's final status)."""
    trainer.dsum_stop_reason = reason  # type: ignore[attr-defined]
    trainer.should_stop = True


def record_path(run_dir: Path, stage: str) -> Path:
    """`run.json` for fit, `<stage>.json` for validate/test/predict, so stages never clobber each other."""
    return run_dir / (RUN_RECORD if stage == "fit" else f"{stage}.json")


def find_run_record(trainer: L.Trainer) -> RunRecord | None:
    """The trainer's :class:`RunRecord` callback, if it has one."""
    return next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)


def _process_age_seconds() -> float | None:
    """Seconds since this process started (Linux/macOS via psutil), for the time-to-first-step figure."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class RunRecord(L.Callback):
    """Writes the run record: run id, W&B run/sweep ids and sweep parameters if any, the status of every stage
    (running, completed, interrupted, pruned, failed), best and final metrics, and paths. Rank 0 writes; every
    write is atomic. Other callbacks add to it through :meth:`update` and :meth:`set_status`.

    Args:
        run_id: The run id (the W&B agent's, a resumed run's, or a new one); set by ``DsumCLI``.
    """

    def __init__(self, run_id: str | None = None, resuming: bool = False) -> None:
        self.run_id = run_id
        self.resuming = resuming
        self.record: dict[str, Any] = {}
        self.stage = ""

    @staticmethod
    def run_dir(trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def save(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and self.record:
            atomic_write_json(record_path(self.run_dir(trainer), self.stage), redact(self.record))

    def update(self, trainer: L.Trainer, **fields: Any) -> None:
        """Add top-level fields and save."""
        self.record.update(fields)
        self.save(trainer)

    def set_status(self, trainer: L.Trainer, status: str, **extra: Any) -> None:
        """The final status of this stage (with extra fields for its history entry), saved."""
        self.record["status"] = status
        self.record["history"][-1].update(status=status, ended_at=now(), **extra)
        self.save(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum
        self.stage = stage
        path = record_path(self.run_dir(trainer), stage)
        previous = read_json(path) if trainer.is_global_zero and path.is_file() else {}
        if stage == "fit" and not self.resuming:
            # A new run in a reused directory: keep the old status history, none of the old run's results.
            previous = {"history": previous.get("history", [])}
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
            "monitor": getattr(checkpoint, "monitor", None) or MONITOR,
            "command": [sys.executable, *sys.argv],
            "world_size": trainer.world_size,
            "history": [*previous.get("history", []), {"stage": stage, "status": "running", "started_at": now()}],
        }
        self.record.update(self._evaluation_identity(trainer, pl_module))
        if stage != "fit":
            # Evaluation stages report this invocation's metrics only; fit accumulates across resumes.
            self.record.update(best_metric=None, final_metrics={}, metrics_history=[])
        self.save(trainer)

    @staticmethod
    def _evaluation_identity(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """How this run's scores were made, so the registry compares like with like: ``metric`` (the ROUGE
        settings) and ``val_data`` (the validation file, its SHA-256 and ``data.val_subset``)."""
        identity: dict[str, Any] = {}
        rouge = getattr(getattr(pl_module, "val_metrics", None), "rouge", None)
        if rouge is not None and hasattr(rouge, "settings"):
            identity["metric"] = rouge.settings()
        data = getattr(trainer, "datamodule", None)
        val = getattr(data, "splits", {}).get("val")
        if val is not None:
            identity["val_data"] = {"file": str(val.table.path), "sha256": val.table.sha256,
                                    "val_subset": getattr(data, "val_subset", None)}
        return identity

    def _record_metrics(self, trainer: L.Trainer, prefix: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        if not metrics:
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        # One entry per (epoch, step): a resumed run that validates a point again replaces it (and anything after).
        point = (entry["epoch"], entry["step"])
        previous = [h for h in self.record.get("metrics_history", []) if (h["epoch"], h["step"]) < point]
        history = [*previous, entry]
        self.update(trainer, final_metrics=metrics, metrics_history=history, global_step=trainer.global_step,
                    best_metric=self._best(trainer, history))

    def _best(self, trainer: L.Trainer, history: list[dict[str, Any]]) -> float | None:
        """The best monitored value in ``history`` (None if it has none)."""
        monitor = self.record["monitor"]
        scores = [h[monitor] for h in history if monitor in h]
        pick = min if getattr(trainer.checkpoint_callback, "mode", "max") == "min" else max
        return pick(scores) if scores else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record_metrics(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_metrics(trainer, "test/")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_effective_batch(trainer)
        if trainer.ckpt_path:
            # Resumed: what the record counted after the checkpoint's step was lost with the process.
            kept = [h for h in self.record.get("metrics_history", []) if h["step"] <= trainer.global_step]
            self.record["history"][-1]["resumed_from"] = {"checkpoint": str(trainer.ckpt_path),
                                                          "global_step": trainer.global_step}
            self.update(trainer, metrics_history=kept, global_step=trainer.global_step,
                        best_metric=self._best(trainer, kept))

    def _record_effective_batch(self, trainer: L.Trainer) -> None:
        """Records the examples per optimizer step (per-device batch x accumulation x devices), and says it when
        several devices train: DDP multiplies the batch while the learning rate stays as configured."""
        data = trainer.datamodule
        batch = None if getattr(data, "batching", None) == "token_budget" else getattr(data, "batch_size", None)
        if batch is None:
            return  # token_budget batches vary in size
        effective = batch * trainer.accumulate_grad_batches * trainer.world_size
        self.update(trainer, effective_batch_size=effective)
        if trainer.world_size > 1:
            rank_zero_info(f"dsum: {trainer.world_size} devices: effective batch size {effective} = data.batch_size "
                           f"{batch} x trainer.accumulate_grad_batches {trainer.accumulate_grad_batches} x "
                           f"{trainer.world_size} devices (model.learning_rate is not scaled)")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if "startup_seconds" not in self.record["history"][-1]:
            # Process start to first training step: what a sweep pays per trial before any learning.
            self.record["history"][-1]["startup_seconds"] = _process_age_seconds()
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        self.record["global_step"] = trainer.global_step
        if checkpoint is not None:
            self.record["best_checkpoint"] = checkpoint.best_model_path or None
            self.record["last_checkpoint"] = (getattr(checkpoint, "last_model_path", None)
                                              or self.record.get("last_checkpoint"))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.record.get("status") == "running":
            self.set_status(trainer, stop_reason(trainer) or "completed")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self.record or self.record.get("status") != "running" or isinstance(
                exception, (KeyboardInterrupt, SIGTERMException)):
            return  # an interruption is InterruptHandler's to record
        message = redact_text(f"{type(exception).__name__}: {exception}")[:4000]
        hint = OOM_HINT if _is_oom(exception) else None
        if hint:
            rank_zero_warn(f"dsum: {hint}")
        try:
            self.set_status(trainer, "failed", error=message, **({"hint": hint} if hint else {}))
        except OSError:
            pass  # a full or read-only disk: the record keeps its last good state; the original error is reported
