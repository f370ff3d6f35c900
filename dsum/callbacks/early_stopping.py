"""Early stopping that is off unless configured."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import EarlyStopping

from dsum.constants import MONITOR


class OptionalEarlyStopping(EarlyStopping):
    """Early stopping on ``monitor`` that is off unless ``patience`` is set.

    Args:
        monitor: Metric to watch.
        mode: ``max`` or ``min``.
        patience: Validation checks without improvement before stopping; ``None`` disables early stopping.
        min_delta: Smallest change that counts as an improvement.
    """

    def __init__(self, monitor: str = MONITOR, mode: str = "max", patience: int | None = None,
                 min_delta: float = 0.0) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience or 0, min_delta=min_delta)
        self.enabled = patience is not None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The configured patience wins over a checkpoint's (a run resumed with early stopping newly turned on
        # would otherwise get the stored 0 and stop at the first validation without improvement).
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)
