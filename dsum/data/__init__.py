"""Dialogue CSVs to batches: reading and validation, text normalisation, batching, the DataModule."""

from dsum.data.batching import DialogueBatchSampler
from dsum.data.datamodule import DialogueDataModule
from dsum.data.io import DataError, read_dialogue_csv
from dsum.data.text import TextNormalization, find_masks

__all__ = [
    "DataError",
    "DialogueBatchSampler",
    "DialogueDataModule",
    "TextNormalization",
    "find_masks",
    "read_dialogue_csv",
]
