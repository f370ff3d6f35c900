"""Checkpoints written atomically on their own filesystem.

Lightning's ``TorchCheckpointIO`` stages a checkpoint in ``$TMPDIR`` and moves it into place: across filesystems a
copy that first truncates the target, so a kill during it destroys the previous good ``last.ckpt`` (and orphans a
temp file). :class:`AtomicCheckpointIO` writes beside the target instead (:func:`dsum.infra.files.atomic_open`), and
its first save into a directory removes what killed saves left there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from dsum.infra.files import atomic_open, remove_stale_temps


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes each checkpoint to a temporary file in the target directory, fsyncs
    it and renames it over the target. Remote paths (``s3://``, ...) keep Lightning's own behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()  # directories cleared of killed saves' temporary files

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # remote
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent not in self._cleaned:
            self._cleaned.add(target.parent)
            remove_stale_temps(target.parent)
        with atomic_open(target, "wb") as handle:
            torch.save(checkpoint, handle)
        return None
