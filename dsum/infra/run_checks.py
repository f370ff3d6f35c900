"""Checks a run makes before it writes anything: a usable run directory, a checkpoint that exists and fits
the model, a submission path that can be written. Each failure is one line naming the path or key."""

from __future__ import annotations

import errno
from pathlib import Path

import torch

from dsum.constants import LAST_NAME
from dsum.infra.files import check_writable

# `--ckpt_path` values that Lightning resolves itself (not file names).
SPECIAL_CKPT_PATHS = ("best", "hpc", "registry")


def check_run_dir(run_dir: str | Path) -> Path:
    """``trainer.default_root_dir`` must be a directory (or creatable as one) whose name the file system takes;
    otherwise a ``ValueError`` says why."""
    path = Path(run_dir)
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"trainer.default_root_dir={path} is an existing file; give a directory")
    except OSError as error:  # ENAMETOOLONG, ENOTDIR, ELOOP: `exists` raises them instead of answering
        raise ValueError(f"trainer.default_root_dir={path} cannot be used: {error.strerror}") from None
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise ValueError(f"trainer.default_root_dir={path} cannot be used: a part of it is a file")
    return path


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> Path | None:
    """The checkpoint file ``--ckpt_path`` names (``last``: ``<run dir>/checkpoints/last.ckpt``). A missing file
    raises ``FileNotFoundError``, where Lightning would only warn and train from scratch."""
    if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS:
        return None
    if ckpt_path == "last":
        last = Path(run_dir) / "checkpoints" / LAST_NAME
        if not last.is_file():
            raise FileNotFoundError(f"--ckpt_path last: no checkpoint to resume from ({last} does not exist); "
                                    f"check trainer.default_root_dir, or drop --ckpt_path to start a new run")
        return last
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file")
    return path


def check_checkpoint_fits(checkpoint: Path, model: torch.nn.Module) -> None:
    """Every tensor of ``checkpoint``'s ``state_dict`` must exist in ``model`` with the same shape (a model may
    hold more, e.g. a frozen base that LoRA checkpoints leave out), else a ``ValueError`` names a differing tensor.
    Read memory-mapped: nothing is copied."""
    try:
        state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False).get("state_dict", {})
    except Exception as error:  # noqa: BLE001 (a truncated or foreign file: say which)
        raise ValueError(f"--ckpt_path {checkpoint} is not a readable checkpoint: {error}") from None
    own = model.state_dict()
    if getattr(model, "model", True) is None:
        # A quantized base loads later, in `configure_model` (on the device Lightning picks): its tensors can
        # only be compared then; the rest (metric states, ...) is checked now.
        state = {name: value for name, value in state.items() if not name.startswith("model.")}
    unknown = [name for name in state if name not in own]
    reshaped = [name for name in state if name in own and tuple(state[name].shape) != tuple(own[name].shape)]
    if unknown or reshaped:
        example = (f"{reshaped[0]} is {tuple(state[reshaped[0]].shape)} there and {tuple(own[reshaped[0]].shape)} "
                   f"here" if reshaped else f"{unknown[0]} is not in this model")
        raise ValueError(f"--ckpt_path {checkpoint} does not fit this model ({len(unknown)} unknown and "
                         f"{len(reshaped)} differently shaped tensors; {example}): it was written by another model "
                         f"family, size or LoRA setting")


def check_output_file(path: str | Path) -> Path:
    """``path`` can be written (its directory is created), else an ``OSError`` with the path and errno: checked
    before any work whose result it holds."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    check_writable(path.parent, probe_bytes=1)
    return path
