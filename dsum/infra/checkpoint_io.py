"""Checkpoints written atomically on their own filesystem.

Lightning's ``TorchCheckpointIO`` stages a checkpoint in ``$TMPDIR`` and moves it into place; when the run
directory is on another filesystem that move is a copy that first truncates the target, so a kill during the
copy destroys the previous good ``last.ckpt`` (and every kill orphans a temp file of the checkpoint's size).
:class:`AtomicCheckpointIO` writes beside the target instead, fsyncs, then renames (see
:func:`dsum.infra.files.atomic_open`): at any instant the final name holds the previous complete checkpoint or the
new one. The first save into a directory removes what killed saves left there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from dsum.infra.files import atomic_open, remove_stale_temps


def _is_local(path: _PATH) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes each checkpoint to a temporary file in the target directory, fsyncs
    it and renames it over the target. Remote paths (``s3://``, ...) keep Lightning's own behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def clean_directory(self, directory: str | Path) -> list[Path]:
        """Remove the temporary files of killed saves in ``directory`` (once per directory and process)."""
        directory = Path(directory)
        if directory in self._cleaned:
            return []
        self._cleaned.add(directory)
        return remove_stale_temps(directory)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        self.clean_directory(target.parent)
        with atomic_open(target, "wb") as handle:
            torch.save(checkpoint, handle)
        return None
