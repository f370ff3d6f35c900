"""Tiny, randomly initialised Hugging Face models built offline from a dialogue CSV.

Tests, the quickstart and benchmarks cannot download checkpoints, so this module trains a small tokenizer on a
CSV's ``dialogue`` and ``summary`` columns and saves a seeded random model in Hugging Face format:

- ``bart``: ``BartForConditionalGeneration``; ``<s> X </s>`` inputs, decoding starts from ``</s>``.
- ``t5``: ``T5ForConditionalGeneration`` (v1.1 gated-GELU); ``<pad>``=0, ``</s>``=1, ``<unk>``=2, inputs end
  in ``</s>``, decoding starts from ``<pad>``.
- ``gpt2``: ``GPT2LMHeadModel``, byte-level BPE, ``<|endoftext|>`` as bos/eos/unk and, like GPT-2, no pad token.

Every ``#...#`` mask in the CSV plus :data:`DEFAULT_MASKS` is one special token, so ``skip_special_tokens=True``
also deletes masks from decoded text. ``bart`` and ``t5`` keep every ``"\\n"`` a token of its own and fall back
to UTF-8 byte tokens (``<0xEA>``) rather than ``<unk>``.

Example:
    python -m dsum.tiny --csv data/sample/train.csv --out tiny_models --families bart,t5
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from dsum.data.text import DEFAULT_MASKS, MASK_PATTERN  # noqa: F401 (DEFAULT_MASKS: the default masks, re-exported)
from dsum.tiny.llm import PRETRAIN_STEPS
from dsum.tiny.tokenizer_training import SPECIALS, discover_masks, read_texts, train_backend

FAMILIES: tuple[str, ...] = ("bart", "t5", "gpt2")
"""Model families :func:`build_tiny_model` can build."""

def build_tokenizer(
    csv_paths: str | Path | Sequence[str | Path],
    family: str,
    vocab_size: int = 2000,
    max_positions: int = 1024,
    masks: Sequence[str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a small BPE tokenizer for ``family`` on the CSVs' dialogues and summaries.

    ``family`` (:data:`FAMILIES`) picks the special tokens and pre-tokenizer; ``vocab_size`` counts special and byte
    tokens (a small corpus may give fewer: read ``len(tokenizer)``); ``max_positions`` is saved as
    ``model_max_length``; ``masks`` are registered as special tokens (default: :data:`DEFAULT_MASKS` and every
    ``#...#`` mask in the CSVs). ``AutoTokenizer`` loads the result's ``save_pretrained`` output back unchanged.
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; choose one of {list(FAMILIES)}.")
    texts = read_texts(csv_paths)
    mask_list = discover_masks(texts) if masks is None else list(dict.fromkeys(masks))
    bad = [m for m in mask_list if not MASK_PATTERN.fullmatch(m)]
    if bad:
        raise ValueError(f"masks {bad} do not look like '#Name#' (pattern {MASK_PATTERN.pattern}).")
    backend = train_backend(family, texts, mask_list, vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=max_positions,
        # Keep decode(encode(x)) == x; the default clean-up would glue punctuation to words.
        clean_up_tokenization_spaces=False,
        additional_special_tokens=mask_list,
        **SPECIALS[family],
    )


def _model_and_generation_config(
    family: str, tokenizer: PreTrainedTokenizerFast, d_model: int, layers: int, heads: int, ffn: int,
    max_positions: int, max_new_tokens: int,
):
    from transformers import BartConfig, GenerationConfig, GPT2Config, T5Config

    vocab = len(tokenizer)
    pad, eos, bos = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    if family == "bart":
        config = BartConfig(
            vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
            decoder_ffn_dim=ffn, max_position_embeddings=max_positions, pad_token_id=pad,
            bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=eos,
        )
        generation = {"decoder_start_token_id": eos, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
                      "forced_eos_token_id": eos}
    elif family == "t5":
        config = T5Config(
            vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=ffn, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
            pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
        )
        generation = {"decoder_start_token_id": pad, "eos_token_id": eos, "pad_token_id": pad}
    else:
        config = GPT2Config(
            vocab_size=vocab, n_embd=d_model, n_layer=layers, n_head=heads, n_inner=ffn,
            n_positions=max_positions, bos_token_id=bos, eos_token_id=eos,
        )
        # No pad token exists; generate() pads finished rows with eos, as for the real GPT-2.
        generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    return config, GenerationConfig(**generation, max_new_tokens=max_new_tokens)


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    csv_paths: str | Path | Sequence[str | Path],
    d_model: int = 64,
    layers: int = 2,
    heads: int | None = None,
    ffn: int | None = None,
    vocab_size: int = 2000,
    max_positions: int = 1024,
    seed: int = 0,
    max_new_tokens: int = 64,
) -> Path:
    """Build and save a seeded, randomly initialised ``family`` model (:data:`FAMILIES`) and its tokenizer, trained on
    ``csv_paths``, in Hugging Face format into ``out_dir`` (created if missing; files in it are overwritten).

    The sizes, ``seed`` and ``max_new_tokens`` are as in :func:`main`; the model's vocabulary is ``len(tokenizer)``.
    Returns ``out_dir`` as a :class:`~pathlib.Path`.
    """
    import torch
    from transformers import BartForConditionalGeneration, GPT2LMHeadModel, T5ForConditionalGeneration

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; choose one of {list(FAMILIES)}.")
    heads = heads if heads is not None else max(4, d_model // 64)
    ffn = ffn if ffn is not None else 2 * d_model
    for name, value in {"d_model": d_model, "layers": layers, "heads": heads, "ffn": ffn,
                        "max_positions": max_positions}.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be a positive integer.")
    if d_model % heads:
        raise ValueError(f"d_model={d_model} is not divisible by heads={heads}; pick heads that divide d_model.")

    out = Path(out_dir)
    tokenizer = build_tokenizer(csv_paths, family, vocab_size=vocab_size, max_positions=max_positions)
    config, generation = _model_and_generation_config(
        family, tokenizer, d_model, layers, heads, ffn, max_positions, max_new_tokens
    )
    model_class = {
        "bart": BartForConditionalGeneration,
        "t5": T5ForConditionalGeneration,
        "gpt2": GPT2LMHeadModel,
    }[family]
    # A private generator state: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config = generation
    model.config.dsum_tiny = True  # the registry keeps runs of tiny models in its sandbox
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_all(
    csv_paths: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    families: Sequence[str] = FAMILIES,
    **sizes,
) -> dict[str, Path]:
    """Build one tiny model per family under ``out_dir/<family>`` (``sizes``: :func:`build_tiny_model`'s options);
    returns family name -> model directory."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families {unknown} are not supported; choose from {list(FAMILIES)}.")
    return {f: build_tiny_model(f, Path(out_dir) / f, csv_paths, **sizes) for f in families}


def main(
    csv: str | list[str],
    out: str = "tiny_models",
    families: str = ",".join((*FAMILIES, "llm")),
    d_model: int = 64,
    layers: int = 2,
    heads: int | None = None,
    ffn: int | None = None,
    vocab_size: int = 2000,
    max_positions: int = 1024,
    seed: int = 0,
    max_new_tokens: int = 64,
    pretrain_steps: int = PRETRAIN_STEPS,
) -> None:
    """Build tiny random BART / T5 / GPT-2 models, and a tiny Llama-style chat LLM (``llm``, briefly pre-trained:
    see :mod:`dsum.tiny.llm`), with tokenizers trained on a dialogue CSV.

    Args:
        csv: CSV file (or a list of them) with dialogue/summary columns to train the tokenizers on.
        out: Output directory; each family is written to OUT/<family>.
        families: Comma-separated families to build, from bart, t5, gpt2, llm.
        d_model: Hidden size.
        layers: Layers; encoder and decoder each get this many for bart and t5.
        heads: Attention heads (default max(4, d_model // 64)); must divide d_model.
        ffn: Feed-forward inner size (default 2 * d_model).
        vocab_size: Target vocabulary size, special and byte tokens included.
        max_positions: Maximum sequence length (position embeddings, tokenizer model_max_length).
        seed: Random seed for the weights.
        max_new_tokens: Default generation length in generation_config.json.
        pretrain_steps: Language-modelling steps on the CSV's text for ``llm`` (0 = random weights).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per family is noise here
    names = [f.strip() for f in families.split(",") if f.strip()]
    unknown = [f for f in names if f not in (*FAMILIES, "llm")]
    if unknown or not names:
        raise ValueError(f"--families={families!r}: {unknown or 'nothing'} is not one of {[*FAMILIES, 'llm']}.")
    sizes = {"d_model": d_model, "layers": layers, "heads": heads, "ffn": ffn, "vocab_size": vocab_size,
             "max_positions": max_positions, "seed": seed, "max_new_tokens": max_new_tokens}
    for family in names:
        start = time.perf_counter()
        if family == "llm":
            from dsum.tiny.llm import build_tiny_llm

            path = build_tiny_llm(Path(out) / family, csv, pretrain_steps=pretrain_steps, **sizes)
        else:
            path = build_tiny_model(family, Path(out) / family, csv, **sizes)
        print(f"{family}: {path} ({time.perf_counter() - start:.1f}s)")
