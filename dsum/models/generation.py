"""Faster beam search for encoder-decoder models: a cache that does not copy cross-attention keys every step.

Hugging Face beam search reorders the whole ``EncoderDecoderCache`` after every decoding step
(``cache.reorder_cache(beam_idx)``), the cross-attention part included. That part holds one copy of the
encoder's keys and values per beam, ``(batch * beams, heads, source length, head dim)`` per layer, and is
copied whole by ``index_select`` at each of the ``max_new_tokens`` steps, although the copy changes nothing:

- every beam of an example attends to the same encoder output, so its cross-attention rows are equal;
- beam search only ever moves a beam within its own example (``beam_idx`` is ``example * num_beams + beam``).

:class:`BeamSharedCrossAttentionCache` therefore reorders only the self-attention cache. The generated ids are
the same, token for token (``tests/test_generation_cache.py``); the saving grows with the source length
(on a tiny BART over ``dev.csv`` dialogues the copy was most of a decoding step's time on CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


class BeamSharedCrossAttentionCache(EncoderDecoderCache):
    """An ``EncoderDecoderCache`` whose beam reordering leaves the cross-attention cache as it is."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the self-attention cache only (the cross-attention rows of one example's beams are equal)."""
        self.self_attention_cache.reorder_cache(beam_idx)


def generation_cache(model: PreTrainedModel, num_beams: int) -> dict[str, Any]:
    """``generate`` keyword arguments that give an encoder-decoder beam search a
    :class:`BeamSharedCrossAttentionCache`; empty (Hugging Face's own cache) for greedy search,
    decoder-only models, or a configured ``cache_implementation`` (static caches)."""
    config = model.config
    if num_beams <= 1 or not config.is_encoder_decoder:
        return {}
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        return {}
    decoder = config.get_text_config(decoder=True)
    return {"cache": BeamSharedCrossAttentionCache(DynamicCache(config=decoder), DynamicCache(config=decoder))}
