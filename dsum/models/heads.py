"""Run a model's output head only at the positions that carry a loss."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel


@contextmanager
def output_head_only_at(model: PreTrainedModel, keep: torch.Tensor) -> Iterator[bool]:
    """Inside the block, ``model``'s output head (the LM head) runs only where ``keep`` is True.

    A forward pre-hook gathers the head's input, hidden states of shape ``keep.shape + (d_model,)``,
    to ``(keep.sum(), d_model)``, so the model returns logits of shape ``(keep.sum(), vocab)`` in
    row-major order, aligned with ``labels[keep]``. Padded summary positions, and a decoder-only
    model's prompt positions, then cost no vocabulary projection, no softmax and no gradient through
    either. Biases the model adds after the head (BART's ``final_logits_bias``, shape ``(1, vocab)``)
    broadcast as before. The weights, the state dict and everything outside the block are unchanged.

    Args:
        model: A Hugging Face model whose ``get_output_embeddings()`` is its output head.
        keep: Boolean mask over the head's input positions, ``(batch, length)``.

    Yields:
        True when the head is gathered; False when the model has no output-embeddings module, in
        which case the logits keep their full ``(batch, length, vocab)`` shape.
    """
    head = model.get_output_embeddings()
    if head is None:
        yield False
        return

    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not args or tuple(args[0].shape[:-1]) != tuple(keep.shape):
            got = tuple(args[0].shape) if args else "keyword arguments"
            raise RuntimeError(
                f"{type(model).__name__}: expected output-head input of shape {tuple(keep.shape)} + (hidden,), "
                f"got {got}"
            )
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
        raise RuntimeError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} from a gathered output head; "
            f"expected ({expected}, vocab)"
        )
    return logits
