"""The best checkpoint, exported in Hugging Face format after ``fit``."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from dsum.callbacks.record import find_run_record, stop_reason
from dsum.infra.files import atomic_write_dir, remove_stale_temps

BEST_MODEL_DIR = "best_model"
NO_EXPORT = ("interrupted", "diverged")  # stop reasons after which nothing is exported


class BestModelExport(L.Callback):
    """After ``fit``, exports the best checkpoint's weights with the model's ``export`` (e.g. ``save_pretrained``)
    into ``<run dir>/best_model``, atomically. Rank 0 only; skipped when the run was interrupted, failed or
    diverged, or when a weight is NaN or infinite.

    Args:
        export_best: Export the best checkpoint after ``fit``.
    """

    def __init__(self, export_best: bool = True) -> None:
        self.export_best = export_best
        self.validated = False  # a validation ran in this fit (sanity checks do not count)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:  # what an export killed in an earlier run of this directory left behind
            remove_stale_temps(Path(trainer.default_root_dir), BEST_MODEL_DIR)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.export_best and trainer.is_global_zero and stop_reason(trainer) not in NO_EXPORT):
            return
        record = find_run_record(trainer)
        if record is not None and record.record.get("status") == "failed":
            return  # a failed (e.g. diverged) run is never exported, so never promoted
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not self.validated and not (best and Path(best).is_file()):
            message = (f"no validation ran in this fit (it ended at step {trainer.global_step}, before the first "
                       f"one), so nothing was exported; validate more often (trainer.val_check_interval, "
                       f"trainer.check_val_every_n_epoch) or train longer")
            rank_zero_warn(f"dsum: {message}")
            if record is not None:
                record.update(trainer, best_model=None, export_skipped=message)
            return
        path = self.export(trainer, pl_module)
        if record is not None:
            record.update(trainer, best_model=str(path) if path else None)

    @staticmethod
    def export(trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Load the best checkpoint's weights (if any) and export them, atomically; None (with a warning)
        when a weight is NaN or infinite."""
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)
        bad = next((name for name, tensor in pl_module.state_dict().items()
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)
        if bad is not None:
            rank_zero_warn(f"dsum: not exporting {best or 'the model'}: tensor {bad!r} holds NaN or infinite values")
            return None
        return atomic_write_dir(Path(trainer.default_root_dir) / BEST_MODEL_DIR, pl_module.export)
