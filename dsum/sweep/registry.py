"""The best-model registry: `models/best_model/` only ever holds a model that beat the one before it.

Promotion copies an exported run's `best_model/` into place atomically (build beside, then rename)
under an exclusive file lock, so concurrent workers finishing at once serialise, and a reader never
sees a half-written directory.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from dsum.files import atomic_write_dir, atomic_write_json, is_complete_dir, read_json

DEFAULT_REGISTRY = Path("models/best_model")
REGISTRY_INFO = "dsum_best.json"
Goal = Literal["maximize", "minimize"]


@contextmanager
def registry_lock(registry: Path) -> Iterator[None]:
    """Exclusive lock shared by every process promoting into `registry` (same machine or NFS with locks)."""
    registry.parent.mkdir(parents=True, exist_ok=True)
    with open(registry.parent / f".{registry.name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_best(registry: str | Path = DEFAULT_REGISTRY) -> dict[str, Any] | None:
    """The registry's record (metric, value, run id, source), or None when it holds no complete model."""
    registry = Path(registry)
    info = registry / REGISTRY_INFO
    if not (is_complete_dir(registry) and info.is_file()):
        return None
    return read_json(info)


def beats(value: float, incumbent: float | None, goal: Goal) -> bool:
    if incumbent is None:
        return True
    return value > incumbent if goal == "maximize" else value < incumbent


def promote_if_better(
    candidate: str | Path,
    value: float,
    metric: str = "val/rouge_mean",
    goal: Goal = "maximize",
    registry: str | Path = DEFAULT_REGISTRY,
    source: dict[str, Any] | None = None,
) -> bool:
    """Copy the exported model `candidate` into `registry` if `value` beats the registry's.

    Args:
        candidate: An exported model directory (a run's ``best_model/``).
        value: The candidate's metric value.
        metric: The metric's name, recorded with the model.
        goal: ``maximize`` or ``minimize``.
        registry: The registry directory.
        source: Extra facts to record (run id, sweep id, params, run dir).

    Returns:
        Whether the candidate was promoted.
    """
    candidate, registry = Path(candidate), Path(registry)
    if not is_complete_dir(candidate):
        raise FileNotFoundError(f"{candidate}: not a complete exported model (no .complete marker)")
    with registry_lock(registry):
        best = current_best(registry)
        if best is not None and best.get("metric") != metric:
            raise ValueError(f"{registry} holds a model ranked by {best.get('metric')!r}, not {metric!r}")
        if not beats(value, None if best is None else best["value"], goal):
            return False

        def fill(staging: Path) -> None:
            shutil.copytree(candidate, staging, dirs_exist_ok=True)
            (staging / ".complete").unlink(missing_ok=True)
            atomic_write_json(staging / REGISTRY_INFO, {
                "metric": metric, "value": value, "goal": goal, "candidate": str(candidate),
                "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(source or {}),
            })

        atomic_write_dir(registry, fill)
        return True
