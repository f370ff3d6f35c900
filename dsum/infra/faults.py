"""Known faults as one clear line instead of a traceback: a diverged run, a full or read-only disk, a setting
out of range (which jsonargparse would bury under a multi-KB dump of the whole config), W&B out of reach.

The entry point wraps the CLI in :func:`report_faults`; ``DSUM_TRACEBACK=1`` shows the full traceback too.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dsum.infra.files import exception_chain
from dsum.infra.secrets import redact_text

TRACEBACK_ENV = "DSUM_TRACEBACK"
# Write failures of the storage itself: a full disk or quota, a read-only or failing filesystem, no permission.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
_DSUM_DIR = str(Path(__file__).resolve().parents[1])
MAX_LINE = 600


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (more often than ``divergence.max_nonfinite_steps`` allows)."""


def _raised_in_dsum(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is dsum's own code (a check dsum makes)."""
    frames = list(traceback.walk_tb(error.__traceback__))
    return bool(frames) and frames[-1][0].f_code.co_filename.startswith(_DSUM_DIR)


def disk_error(error: BaseException) -> OSError | None:
    """The storage error (full disk, read-only, no permission, ...) behind ``error``, if any."""
    return next((e for e in exception_chain(error) if isinstance(e, OSError) and e.errno in DISK_ERRNOS), None)


def fatal_message(error: BaseException) -> str | None:
    """One line (secrets masked) for a known fault behind ``error``, or None for anything else.

    - a diverged run (:class:`TrainingDiverged`, raised by :class:`dsum.callbacks.divergence.NonFiniteLossGuard`);
    - a W&B server out of reach under ``WANDB_MODE=online`` (:class:`dsum.infra.tracking.WandbUnreachable`);
    - a write that failed for lack of space, a read-only filesystem or permissions: the path and the errno;
    - a ``ValueError``, ``TypeError``, ``FileNotFoundError`` or ``IsADirectoryError`` raised by one of dsum's own
      checks, however deeply jsonargparse wrapped it.
    """
    from dsum.infra.tracking import WandbUnreachable

    chain = list(exception_chain(error))
    line = next((f"dsum: {e}" for e in chain if isinstance(e, (TrainingDiverged, WandbUnreachable))), None)
    if line is None and (disk := disk_error(error)) is not None:
        where = f"{disk.filename} -> {disk.filename2}" if disk.filename2 else disk.filename or "a file"
        line = f"dsum: cannot write {where}: [Errno {disk.errno}] {os.strerror(disk.errno)}"
        if disk.errno in (errno.ENOSPC, errno.EDQUOT):
            line += " (free some space or point trainer.default_root_dir elsewhere)"
    if line is None:  # the innermost of dsum's own checks
        own = (ValueError, TypeError, FileNotFoundError, IsADirectoryError)
        line = next((f"dsum: {e}" for e in reversed(chain) if isinstance(e, own) and _raised_in_dsum(e)), None)
    if line is None:
        return None
    line = redact_text(" ".join(line.split()))
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


@contextmanager
def report_faults(exit_code: int = 1) -> Iterator[None]:
    """Run the body; a known fault (:func:`fatal_message`) ends the process with one line on stderr and
    ``exit_code`` (the full traceback too when ``DSUM_TRACEBACK=1``). Anything else propagates unchanged."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (filtered by fatal_message; everything else re-raised)
        line = fatal_message(error)
        if line is None:
            raise
        if os.environ.get(TRACEBACK_ENV) == "1":
            traceback.print_exc()
        _quiet_wandb(exit_code)
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(exit_code) from None


def _quiet_wandb(exit_code: int) -> None:
    """Finish a W&B run still open (marked failed) without its own console output after our line."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    # The disk may be full: nothing more to save.
    with (contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        wandb.finish(exit_code=exit_code)
