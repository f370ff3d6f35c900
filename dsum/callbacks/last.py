"""``last.ckpt``: the latest training state, whatever the monitored metric does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Checkpoint

from dsum.callbacks.record import find_run_record
from dsum.constants import LAST_NAME


class LastCheckpoint(Checkpoint):
    """Rewrites ``<checkpoint dir>/last.ckpt`` at the end of every training epoch (after its validation) and,
    with ``every_n_train_steps``, every that many optimizer steps, for ``fit --ckpt_path last``. The best
    checkpoint stays ``checkpoint``'s job (with ``save_last`` off: two writers would make Lightning rename it).

    Args:
        every_n_train_steps: Also rewrite ``last.ckpt`` every this many optimizer steps (0: at epoch ends only).
            Each write costs a full checkpoint (weights and optimizer state).
        dirpath: The checkpoint directory (``main.py`` links it to ``<trainer.default_root_dir>/checkpoints``).
    """

    def __init__(self, every_n_train_steps: int = 0, dirpath: str | None = None) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"last_checkpoint.every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.dirpath = dirpath
        self.last_model_path = ""
        self._step_seen = -1

    def path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / LAST_NAME

    def save(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` now (every rank calls it; rank 0 writes)."""
        path = self.path(trainer)
        trainer.save_checkpoint(path)
        self.last_model_path = str(path)
        record = find_run_record(trainer)
        if record is not None and record.record:
            record.record["last_checkpoint"] = str(path)  # written with the record's next update
        return path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step  # a resumed run starts at the checkpoint's step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        # A new step number means this batch ended an optimizer step (not a gradient-accumulation micro-batch).
        stepped, self._step_seen = step != self._step_seen, step
        if self.every_n_train_steps and stepped and step > 0 and step % self.every_n_train_steps == 0:
            if not trainer.fast_dev_run:
                self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_model_path = state_dict.get("last_model_path", "")
