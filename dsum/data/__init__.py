"""Dialogue CSVs to batches: reading and validation, text normalisation, batching, the DataModule.

Names are imported lazily, so light users (the scorer, the metric) don't import `datasets`/`transformers`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "dsum.data.io",
    "read_dialogue_csv": "dsum.data.io",
    "DialogueBatchSampler": "dsum.data.batching",
    "DialogueDataModule": "dsum.data.datamodule",
    "TextNormalization": "dsum.data.text",
    "find_masks": "dsum.data.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dsum.data' has no attribute {name!r}")
