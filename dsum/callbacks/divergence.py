"""Divergence is a failure, not a result: a NaN or infinite training loss stops the run."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from dsum.callbacks.record import find_run_record
from dsum.infra.faults import TrainingDiverged

DIVERGED = "diverged"


def _skip_optimizer_step(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Makes the coming optimizer step leave the weights unchanged: the gradients are dropped (AdamW and Adafactor
    skip a parameter without one), except for a fused optimizer under ``16-mixed``, which unscales inside its own
    step: its gradients are set to NaN so that ``scaler.step`` skips the step (and lowers the loss scale)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.zero_grad(set_to_none=True)
        return
    for param in (p for group in optimizer.param_groups for p in group["params"] if p.grad is not None):
        param.grad.fill_(float("nan"))


class NonFiniteLossGuard(L.Callback):
    """Fails the run when the training loss is NaN or infinite: the run record says ``failed`` with
    ``reason: diverged``, and no export or promotion follows. Optionally skips a bounded number of such steps
    first (the weights are not updated on a skipped step). Every rank takes the same decision.

    Args:
        max_nonfinite_steps: Optimizer steps with a non-finite loss to skip before failing (0: fail at the first).
    """

    def __init__(self, max_nonfinite_steps: int = 0) -> None:
        if max_nonfinite_steps < 0:
            raise ValueError(f"divergence.max_nonfinite_steps must be >= 0, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.skipped = 0
        self._bad_loss: torch.Tensor | None = None  # a non-finite loss since the last optimizer step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # Kept on the device: one host sync per optimizer step, in on_before_optimizer_step.
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else (self._bad_loss | bad)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        local = bool(self._bad_loss) if self._bad_loss is not None else False
        self._bad_loss = None
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        step = trainer.global_step
        if self.skipped < self.max_nonfinite_steps:
            self.skipped += 1
            _skip_optimizer_step(trainer, optimizer)
            rank_zero_warn(f"dsum: non-finite train/loss at step {step}; step skipped, weights unchanged "
                           f"({self.skipped} of divergence.max_nonfinite_steps={self.max_nonfinite_steps})")
            return
        message = (f"training diverged: train/loss is NaN or infinite at step {step} (epoch {trainer.current_epoch})"
                   + (f" after {self.skipped} skipped step(s)" if self.skipped else "")
                   + "; lower model.learning_rate (or raise divergence.max_nonfinite_steps to skip such steps)")
        trainer.dsum_stop_reason = DIVERGED  # type: ignore[attr-defined]
        record = find_run_record(trainer)
        if record is not None and record.record:
            record.set_status(trainer, "failed", reason=DIVERGED, error=message, global_step=step)
        raise TrainingDiverged(message)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
