"""Fidelity of a summary beyond ROUGE: are the dataset's masks (``#Person1#``, ...) copied right, and is the summary
as long as the reference? Mask precision (of the masks a prediction writes, the share the reference has, counted
with multiplicity), recall (of the reference's masks, the share the prediction writes), F1, and the length ratio
(prediction / reference characters, whitespace not counted).

All four are pooled over the corpus (sums over examples, then ratios); with several references each reference-side
count is the mean over an example's references. Nothing predicted and nothing expected scores 1.0; something
expected and nothing predicted scores 0.0 recall and 1.0 precision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dsum.data.text import MASK_PATTERN
from dsum.eval.metrics import PooledMean

FIDELITY_KEYS = ("mask_precision", "mask_recall", "mask_f1", "length_ratio")
_COUNTS = ("matched", "predicted", "expected", "pred_chars", "ref_chars")


def masks(text: str) -> Counter[str]:
    """The ``#...#`` masks of ``text``, with their counts."""
    return Counter(MASK_PATTERN.findall(text))


def _chars(text: str) -> int:
    return sum(not c.isspace() for c in text)


def example_counts(prediction: str, references: str | Sequence[str]) -> np.ndarray:
    """``(matched, predicted, expected, pred_chars, ref_chars)`` for one example; the reference-side counts
    (matched, expected, ref_chars) are means over its references."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("an example needs at least one reference")
    predicted = masks(prediction)
    matched = [sum((predicted & masks(ref)).values()) for ref in refs]
    return np.array([np.mean(matched), sum(predicted.values()), np.mean([sum(masks(r).values()) for r in refs]),
                     _chars(prediction), np.mean([_chars(r) for r in refs])], dtype=np.float64)


def _ratio(part: float, whole: float, empty: float) -> float:
    return part / whole if whole > 0 else empty


def fidelity_from_sums(matched: float, predicted: float, expected: float, pred_chars: float,
                       ref_chars: float) -> dict[str, float]:
    """The four scores from corpus sums (or means) of :func:`example_counts`."""
    precision = _ratio(matched, predicted, 1.0)
    recall = _ratio(matched, expected, 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"mask_precision": precision, "mask_recall": recall, "mask_f1": f1,
            "length_ratio": _ratio(pred_chars, ref_chars, float("nan"))}


def fidelity_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Corpus-level mask precision, recall, F1 and length ratio (what ``dsum.eval.score`` reports); the two lists
    must have the same length (``ValueError``)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return fidelity_from_sums(0, 0, 0, 0, 0)
    sums = np.sum([example_counts(p, r) for p, r in zip(predictions, references)], axis=0)
    return fidelity_from_sums(*sums.tolist())


class FidelityMetrics(torch.nn.Module):
    """:func:`fidelity_scores` as an evaluation metric: synced across DDP ranks, each dataset index counted once
    (one :class:`~dsum.eval.metrics.PooledMean` per count; a ratio of means is the ratio of sums)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = torch.nn.ModuleDict({name: PooledMean() for name in _COUNTS})

    def update(self, predictions: Sequence[str], references: Sequence[Any], indices: torch.Tensor) -> None:
        """Add a batch: decoded predictions, their references, their dataset indices."""
        rows = np.stack([example_counts(p, r) for p, r in zip(predictions, references)]) if predictions else \
            np.zeros((0, len(_COUNTS)))
        for column, name in enumerate(_COUNTS):
            self.counts[name].update(torch.as_tensor(rows[:, column]), indices)

    def compute(self) -> dict[str, float]:
        """``mask_precision``, ``mask_recall``, ``mask_f1``, ``length_ratio``."""
        means = [self.counts[name].compute() for name in _COUNTS]
        if any(np.isnan(means)):  # no examples
            return {key: float("nan") for key in FIDELITY_KEYS}
        return fidelity_from_sums(*means)

    def reset(self) -> None:
        for metric in self.counts.values():
            metric.reset()
