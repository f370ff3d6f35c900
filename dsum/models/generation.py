"""Faster beam search for encoder-decoder models: a cache that does not copy cross-attention keys every step.

Hugging Face beam search reorders the whole ``EncoderDecoderCache`` after every decoding step, copying the
cross-attention keys and values (one copy per beam) although the copy changes nothing: every beam of an example
has equal cross-attention rows, and beam search only moves a beam within its own example.
:class:`BeamSharedCrossAttentionCache` therefore reorders only the self-attention cache: the same ids, token for
token (``tests/test_generation_cache.py``), faster the longer the source.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


class BeamSharedCrossAttentionCache(EncoderDecoderCache):
    """An ``EncoderDecoderCache`` whose beam reordering leaves the cross-attention cache as it is."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
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
