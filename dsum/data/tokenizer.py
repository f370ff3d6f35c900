"""Loading a checkpoint's tokenizer, and checking that it keeps the data's text.

transformers 5 can rebuild a hub tokenizer with the model class's pre-tokenizer (byte-level for KoGPT2, whose
``tokenizer.json`` is a character BPE), silently garbling Korean. ``tokenizer_json`` loads ``tokenizer.json`` as
saved, and :func:`check_round_trip` stops a run whose tokenizer loses the data's characters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import islice
from typing import Any, Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

TokenizerLoader = Literal["auto", "tokenizer_json"]
# Texts checked, and the share of their non-space characters a decode(encode(text)) must give back.
ROUND_TRIP_TEXTS = 64
ROUND_TRIP_MIN_KEPT = 0.9


def load_tokenizer(
    name: str, loader: TokenizerLoader = "auto", kwargs: dict[str, Any] | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of checkpoint ``name`` (id or directory), loaded by ``AutoTokenizer`` (``auto``) or from its
    ``tokenizer.json`` as saved (``tokenizer_json``); ``kwargs`` go to ``from_pretrained``."""
    options = {**(kwargs or {}), "trust_remote_code": trust_remote_code}
    if loader == "tokenizer_json":
        return PreTrainedTokenizerFast.from_pretrained(name, **options)
    if loader != "auto":
        raise ValueError(f"data.tokenizer_loader={loader!r}: choose 'auto' or 'tokenizer_json'")
    return AutoTokenizer.from_pretrained(name, **options)


def _characters(text: str) -> Counter[str]:
    """Non-space characters, case-folded (an uncased tokenizer loses nothing that matters here)."""
    return Counter(c for c in text.casefold() if not c.isspace())


def check_round_trip(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], name: str) -> None:
    """Raise if ``decode(encode(text))`` loses more than 10% of the non-space characters of the first texts: ``<unk>``,
    case and spacing changes pass; a wrong pre-tokenizer, which drops whole scripts, does not."""
    sample = [t for t in islice(texts, ROUND_TRIP_TEXTS) if t.strip()]
    if not sample:
        return
    decoded = tokenizer.batch_decode(tokenizer(sample, add_special_tokens=False)["input_ids"])
    counts = []  # per text: its characters, and how many of them came back
    for original, back in zip(sample, decoded):
        want = _characters(original)
        counts.append((sum(want.values()), sum((want & _characters(back)).values())))
    total, kept = (sum(column) for column in zip(*counts))
    if kept < ROUND_TRIP_MIN_KEPT * total:
        worst = min(range(len(counts)), key=lambda i: counts[i][1] / max(1, counts[i][0]))
        raise ValueError(
            f"The tokenizer of {name} ({type(tokenizer).__name__}) loses {1 - kept / total:.0%} of the data's "
            f"characters in decode(encode(text)), e.g. {sample[worst][:60]!r} -> {decoded[worst][:60]!r}. "
            "transformers may have rebuilt it from its vocabulary with another pre-tokenizer: set "
            "data.tokenizer_loader=tokenizer_json to load its tokenizer.json as saved (configs/kogpt2.yaml does), "
            "with data.tokenizer_kwargs for special tokens the checkpoint does not declare."
        )
