"""Random states in checkpoints, so a resumed run draws what the uninterrupted run would have drawn."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn


def collect_random_states() -> dict[str, Any]:
    """This process's Python, NumPy, torch (CPU) and CUDA random states, as plain lists and tensors (so a
    checkpoint holding them loads with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_states(states: dict[str, Any]) -> None:
    """Set the states :func:`collect_random_states` returned. CUDA states are set only when this process sees
    as many devices as the saving one did (else a warning says they were left alone)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state({
        "bit_generator": numpy_state["bit_generator"],
        "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and devices == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        rank_zero_warn(f"dsum: the checkpoint holds {len(cuda)} CUDA random states; this process sees {devices} "
                       "devices, so CUDA's are not restored")


class RandomStateCheckpoint(L.Callback):
    """Saves the random states training consumes (Python, NumPy, torch, CUDA) in every checkpoint, and sets them
    again at the start of training when ``fit`` resumes from one (Lightning seeds once and does not save them).
    Under DDP every rank resumes from rank 0's states: reproducible, but draw-for-draw only on one device.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before set-up (optimizers, loaders) draws; set the states just before training.
        self._to_restore = state_dict if "torch" in state_dict else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is not None:
            restore_random_states(self._to_restore)
            self._to_restore = None
