"""Run a model's output head only at the positions that carry a loss."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel


@contextmanager
def output_head_only_at(model: PreTrainedModel, keep: torch.Tensor) -> Iterator[bool]:
    """Inside the block, ``model``'s output head (``get_output_embeddings()``) runs only where ``keep`` is True.

    A forward pre-hook gathers the head's input from ``keep.shape + (d_model,)`` to ``(keep.sum(), d_model)``, so
    the logits are ``(keep.sum(), vocab)`` in row-major order, aligned with ``labels[keep]``: padding and prompt
    positions cost no vocabulary projection. Biases added after the head (BART's ``final_logits_bias``) broadcast as
    before; nothing outside the block changes.

    Yields:
        True when the head is gathered; False when the model has no output head (full-shape logits then).
    """
    head = model.get_output_embeddings()
    if head is None:
        yield False
        return

    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not args or tuple(args[0].shape[:-1]) != tuple(keep.shape):
            got = tuple(args[0].shape) if args else "keyword arguments"
            raise RuntimeError(f"{type(model).__name__}: expected output-head input of shape {tuple(keep.shape)} "
                               f"+ (hidden,), got {got}")
        return (args[0][keep], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield True
    finally:
        handle.remove()


def check_gathered(logits: torch.Tensor, keep: torch.Tensor, model: PreTrainedModel) -> torch.Tensor:
    """``logits`` after :func:`output_head_only_at`; raises if the model reshaped them afterwards."""
    expected = int(keep.sum())
    if logits.ndim != 2 or logits.shape[0] != expected:
        raise RuntimeError(f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} from a gathered "
                           f"output head; expected ({expected}, vocab)")
    return logits
