"""The ``dsum`` logger: library messages (notes, progress, warnings to the user), on global rank 0 only.

``note("dsum: ...")`` and ``warn("warning: ...")`` write the message as given, one plain line, to the current
``sys.stderr``, in the process of global rank 0 only (:func:`global_rank`). Processes that are never one rank of a
training job (the sweep engine, its workers, ``score``, ``ensemble``) call :func:`every_rank` first, so
``srun -N2 dsum sweep local ...`` reports on both nodes. The logger does not propagate (a root handler would print
each message twice) and ``logging.config.dictConfig`` does not silence it; add a handler to the ``dsum`` logger to
send the messages elsewhere.

Which call for which message: a command's output (``score``'s JSON, tables, paths) is ``print``; a command's fatal
error is ``SystemExit(message)``; code inside a Lightning Trainer (callbacks, models, the datamodule, ``dsum.cli``)
uses Lightning's ``rank_zero_info`` / ``rank_zero_warn``; everything else (sweeps, the registry, the scoring tools,
the data readers) uses :func:`note` and :func:`warn`, except warnings of a category that callers filter or test.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from lightning_utilities.core.rank_zero import rank_zero_only

NAME = "dsum"
# Lightning's order (lightning.fabric.utilities.rank_zero._get_rank), for processes where no Trainer set the rank.
RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's global rank: Lightning's ``rank_zero_only.rank`` (a Trainer sets it) when set, else the first of
    :data:`RANK_ENV` that is set (0 if none), and not 0 on a node other than ``NODE_RANK`` 0."""
    rank = getattr(rank_zero_only, "rank", None)
    if rank is None:
        rank = int(next((os.environ[key] for key in RANK_ENV if os.environ.get(key)), 0))
    if os.environ.get("NODE_RANK", "0") not in ("", "0"):
        return max(rank, 1)  # a local rank 0 on node k > 0 is not global rank 0
    return rank


_EVERY_RANK = False


def every_rank() -> None:
    """Print this process's messages whatever its rank: for processes that are not one rank of a training job."""
    global _EVERY_RANK
    _EVERY_RANK = True


class RankZeroFilter(logging.Filter):
    """Let records through only on global rank 0 (decided per record), unless :func:`every_rank` was called."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _EVERY_RANK or global_rank() == 0


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to (and flushes) whatever ``sys.stderr`` is when a record is emitted."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


def get_logger() -> logging.Logger:
    """The ``dsum`` logger, set up once: INFO and above, rank 0 only, plain lines to stderr, not propagated."""
    logger = logging.getLogger(NAME)
    logger.disabled = False  # dictConfig(disable_existing_loggers=True) would silence dsum's messages
    if not any(isinstance(f, RankZeroFilter) for f in logger.filters):
        logger.addFilter(RankZeroFilter())
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())  # the default format: the message alone
        logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


def note(message: str) -> None:
    """A note or progress message for the user (INFO), e.g. ``note("dsum: worker 0 started ...")``."""
    get_logger().info(message)


def warn(message: str) -> None:
    """A warning for the user (WARNING), written as given, e.g. ``warn(f"warning: {path}: 2 empty rows")``."""
    get_logger().warning(message)
