"""Prediction results as a submission CSV in the competition's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pandas as pd
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from dsum.infra.files import atomic_write_text
from dsum.infra.run_checks import check_output_file


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

    def output_path(self, trainer: L.Trainer) -> Path:
        """``path``, or ``<run dir>/submission.csv``."""
        return Path(self.path) if self.path else Path(trainer.default_root_dir) / "submission.csv"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict" and trainer.is_global_zero:
            check_output_file(self.output_path(trainer))  # before predicting, not after: nothing is lost

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
        frame = pd.DataFrame([by_index[i] for i in range(len(expected))], columns=["fname", "summary"])
        path = self.output_path(trainer)
        # The competition's sample_submission.csv layout: an unnamed 0..n-1 index column, then fname,summary.
        self.written = atomic_write_text(path, frame.to_csv())
        print(f"dsum: wrote {len(frame)} summaries to {path}")
