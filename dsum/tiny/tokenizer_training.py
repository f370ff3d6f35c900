"""Tokenizer training for the tiny offline models: byte-fallback BPE on a dialogue CSV's text, with each family's
special tokens and the data's masks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from dsum.data.text import DEFAULT_MASKS, MASK_PATTERN

TEXT_COLUMNS: tuple[str, ...] = ("dialogue", "summary")
"""CSV columns the tokenizer is trained on (whichever of them a file has)."""

_METASPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker
_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))

# Per family: the named special tokens (in id order, first ids of the vocabulary) and their roles.
SPECIALS: dict[str, dict[str, str]] = {
    "bart": {
        "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"
    },
    "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    # Qwen2-Instruct-style: no bos, <|im_end|> ends a chat turn (and is eos), <|endoftext|> pads.
    "llm": {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": "<unk>"},
}


def as_paths(csv_paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(csv_paths, (str, Path)):
        return [Path(csv_paths)]
    paths = [Path(p) for p in csv_paths]
    if not paths:
        raise ValueError("csv_paths is empty: pass at least one CSV with a 'dialogue' or 'summary' column.")
    return paths


def read_texts(csv_paths: str | Path | Sequence[str | Path]) -> list[str]:
    """Every non-empty ``dialogue`` and ``summary`` cell of one or more CSVs, file by file, row by row.

    Raises FileNotFoundError for a missing file, ValueError for a file with neither column or no text at all.
    """
    texts: list[str] = []
    for path in as_paths(csv_paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such CSV file; pass the path of a train/dev CSV.")
        # keep_default_na=False: a summary such as "NA" or "null" is text, not a missing value.
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
        columns = [c for c in TEXT_COLUMNS if c in frame.columns]
        if not columns:
            raise ValueError(
                f"{path}: has columns {list(frame.columns)} but none of {list(TEXT_COLUMNS)}; "
                "pass a CSV in the competition format (fname,dialogue,summary,topic)."
            )
        for column in columns:
            texts.extend(t for t in frame[column].tolist() if t)
    if not texts:
        raise ValueError(f"{[str(p) for p in as_paths(csv_paths)]}: no non-empty dialogue/summary text to train on.")
    return texts


def discover_masks(texts: Iterable[str], defaults: Sequence[str] = DEFAULT_MASKS) -> list[str]:
    """The mask tokens to register: ``defaults`` first, then the other ``#...#`` masks in ``texts``, sorted (a
    deterministic order, so token ids are reproducible)."""
    found = {m for text in texts for m in MASK_PATTERN.findall(text)}
    return list(dict.fromkeys(defaults)) + sorted(found - set(defaults))


def _frequent_characters(texts: Sequence[str], limit: int, required: Sequence[str]) -> list[str]:
    """The ``limit`` characters the BPE trainer should keep: ``required`` first, then the most frequent
    ones as the trainer counts them (spaces become the metaspace), ties broken by code point."""
    counts = Counter(char for text in texts for char in text.replace(" ", _METASPACE))
    ranked = sorted((c for c in counts if c not in required), key=lambda c: (-counts[c], c))
    return list(required) + ranked[: max(0, limit - len(required))]


def train_backend(family: str, texts: list[str], masks: list[str], vocab_size: int) -> Tokenizer:
    named = list(dict.fromkeys(SPECIALS[family].values()))
    specials = [AddedToken(t, special=True, normalized=False) for t in named + masks]
    if family == "gpt2":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return backend

    # SentencePiece-like: words keep their leading "▁"; prepend_scheme="first" adds it only at the
    # very start, so "#Person1#: 안녕" decodes back without a space after the mask.
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="first"),
        ]
    )
    budget = vocab_size - len(_BYTE_TOKENS)
    if budget < len(specials) + 64:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for family {family!r}: it needs room for "
            f"{len(_BYTE_TOKENS)} byte tokens, {len(specials)} special tokens and some pieces; use >= "
            f"{len(_BYTE_TOKENS) + len(specials) + 64}."
        )
    # Rare characters fall back to byte tokens, so keep half the budget for merges.
    alphabet = _frequent_characters(texts, max(2, (budget - len(specials)) // 2), required=["\n", _METASPACE])
    trainer = trainers.BpeTrainer(
        vocab_size=budget,
        special_tokens=specials,
        # The trainer's own limit_alphabet breaks ties in character counts by hash order, so two runs
        # could keep different characters. Chosen here, the alphabet (and the tokenizer) is reproducible.
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # Byte fallback (as in Llama's tokenizer) so characters missing from a small vocabulary
    # become UTF-8 byte tokens rather than <unk>. The trainer cannot add them, so edit the model.
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    for token in _BYTE_TOKENS:
        vocab.setdefault(token, len(vocab))
    spec["model"]["byte_fallback"] = True
    backend = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    backend.decoder = decoders.Sequence(
        # No Fuse before Metaspace: Metaspace drops every "▁" of the first token it is given.
        [decoders.ByteFallback(), decoders.Metaspace(replacement=_METASPACE, prepend_scheme="first")]
    )
    if family == "bart":
        bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
    elif family == "t5":
        eos = backend.token_to_id("</s>")
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
        )
    return backend
