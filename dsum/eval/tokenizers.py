"""Tokenizers for the official-style Korean ROUGE (:mod:`dsum.eval.metrics`).

- **Tokens:** Mecab-ko morphemes (``python-mecab-ko``, dictionary included), lowercased, punctuation dropped;
  ``kiwi`` (Kiwi's analysed morphemes) and ``whitespace`` (Unicode words) are the alternatives. (rouge-score's own
  tokenizer deletes every character outside ``[a-z0-9]``.)
- **Masks** such as ``#Person1#`` are one lowercased token each, in every tokenizer (Mecab-ko alone would give
  ``#``, ``Person``, ``1``, ``#``; Kiwi ``#Person1`` + ``#은``).
- **Control characters** (NUL, zero-width space, ...) become spaces before any analyser sees them.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

# `#Person1#`, `#PhoneNumber#`, ...: anonymisation masks, scored as single tokens (one definition for data and metric).
from dsum.data.text import MASK_PATTERN

DEFAULT_TOKENIZER = "mecab"
# Anything that is not a letter or digit in any script (underscore counts as punctuation here).
_NON_WORD = re.compile(r"[\W_]+")
# Unicode categories of control (NUL, BEL, ...) and format (zero-width space, BOM, ...) characters.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf"})
# Splits a text into alternating pieces: text, mask, text, ..., text.
_MASK_SPLIT = re.compile(f"({MASK_PATTERN.pattern})")
_MECAB_MISSING = (
    "The 'mecab' ROUGE tokenizer needs python-mecab-ko (with its bundled mecab-ko-dic): "
    "pip install python-mecab-ko  (or choose model.rouge_tokenizer / --tokenizer whitespace or kiwi)"
)
_KIWI_MISSING = "The 'kiwi' ROUGE tokenizer needs kiwipiepy: pip install kiwipiepy  (or: pip install 'dsum[kiwi]')"


@runtime_checkable
class RougeTokenizer(Protocol):
    """What the scorer needs from a tokenizer."""

    def tokenize(self, text: str) -> list[str]: ...


def clean_controls(text: str) -> str:
    """``text`` with every control or format character (Unicode ``Cc``/``Cf``: NUL, zero-width space, BOM ...) but
    whitespace replaced by a space, then NFC-normalised. Mecab-ko reads its input as a C string and stops at the
    first NUL: ``"집에\\x00갔다"`` would lose every word after it."""
    if not text.isprintable():  # printable text (the usual case) has none: skip the per-character pass
        text = "".join(
            " " if not ch.isspace() and unicodedata.category(ch) in _CONTROL_CATEGORIES else ch for ch in text
        )
    return unicodedata.normalize("NFC", text)


class _MaskAwareTokenizer:
    """Base: control characters out (:func:`clean_controls`), NFC, masks cut out and kept whole (lowercased),
    the rest split by :meth:`split`."""

    name = "base"

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for i, piece in enumerate(_MASK_SPLIT.split(clean_controls(text))):
            if i % 2:  # a mask
                tokens.append(piece.lower())
            elif piece.strip():
                tokens += self.split(piece)
        return tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WhitespaceTokenizer(_MaskAwareTokenizer):
    """Unicode words; ``#...#`` masks kept whole and lowercased: ``"#Person1#은 집에 갔다."`` becomes
    ``["#person1#", "은", "집에", "갔다"]``. NFC first, so composed and decomposed Hangul compare equal.
    """

    name = "whitespace"

    def split(self, text: str) -> list[str]:
        """rouge-score's normalisation, Unicode-aware: lowercase, non letters/digits become spaces, split."""
        return _NON_WORD.sub(" ", text.lower()).split()


@functools.lru_cache(maxsize=1)
def _mecab() -> Callable[[str], list[str]]:
    """The process-wide Mecab-ko analyser (python-mecab-ko's bundled dictionary), loaded once: text -> surfaces."""
    try:
        from mecab import MeCab
    except ImportError as err:
        raise ImportError(_MECAB_MISSING) from err
    analyser = MeCab()
    try:
        # MeCab's own text output, split here, is about 3x faster than building python-mecab-ko's Morpheme
        # objects (`MeCab.morphs`); the public method remains the fallback if these internals change.
        from mecab.mecab import create_lattice

        tagger = analyser._tagger

        def surfaces(text: str) -> list[str]:
            lattice = create_lattice(text)
            if not tagger.parse(lattice):
                raise RuntimeError(f"Mecab-ko could not analyse {text[:80]!r}: {tagger.what()}")
            # One `surface<TAB>features` line per morpheme, then `EOS`.
            return [line.split("\t", 1)[0] for line in lattice.to_string().splitlines() if "\t" in line]

        surfaces("테스트")
    except (ImportError, AttributeError, TypeError):
        return analyser.morphs
    return surfaces


class MecabTokenizer(_MaskAwareTokenizer):
    """Mecab-ko morphemes as written in the text (surface forms, lowercased), masks kept whole.

    ``"#Person1#은 전화했다."`` becomes ``["#person1#", "은", "전화", "했", "다"]``; tokens with no letter or digit
    are dropped. The analyser is loaded by the first instance (a missing package fails at once, not after an epoch)
    and shared by the process; instances hold none and pickle freely (DDP, checkpoints).
    """

    name = "mecab"

    def __init__(self) -> None:
        _mecab()

    def split(self, text: str) -> list[str]:
        return [form for form in (f.lower() for f in _mecab()(text)) if not _NON_WORD.fullmatch(form)]


@functools.lru_cache(maxsize=1)
def _kiwi() -> Any:
    """The process-wide Kiwi analyser: loading its model takes about 1.5 s, so it is built once."""
    try:
        from kiwipiepy import Kiwi
    except ImportError as err:
        raise ImportError(_KIWI_MISSING) from err
    return Kiwi()


class KiwiTokenizer(_MaskAwareTokenizer):
    """Kiwi morphemes (the analysed forms, so 했 becomes 하 + 었; lowercased), masks kept whole.

    ``"#Person1#은 전화했다."`` becomes ``["#person1#", "은", "전화", "하", "었", "다"]``; tokens with no letter or
    digit are dropped. Needs the optional ``kiwipiepy``; its model is loaded on first use and shared by the process.
    """

    name = "kiwi"

    def __init__(self) -> None:
        # Fail when the metric is built, not after the first validation epoch (without paying Kiwi's load).
        if importlib.util.find_spec("kiwipiepy") is None:
            raise ImportError(_KIWI_MISSING)

    def tokenize(self, text: str) -> list[str]:
        # Kiwi analyses the whole text (context matters for its analysed forms), the masks given to it as
        # pre-tokenized proper nouns: alone it would split `#Person1#은` into `#Person1` + `#은`.
        text = clean_controls(text)
        masks = [(m.start(), m.end(), "NNP") for m in MASK_PATTERN.finditer(text)]
        forms = (m.form.lower() for m in _kiwi().tokenize(text, pretokenized=masks))
        return [form for form in forms if not _NON_WORD.fullmatch(form)]


# The former name of `kiwi`, kept so that older configs and checkpoints' hparams still load.
MorphemeTokenizer = KiwiTokenizer

TOKENIZERS: dict[str, Callable[[], RougeTokenizer]] = {
    "mecab": MecabTokenizer,
    "kiwi": KiwiTokenizer,
    "whitespace": WhitespaceTokenizer,
}
TOKENIZER_ALIASES: dict[str, str] = {"morpheme": "kiwi"}
TokenizerName = Literal["mecab", "kiwi", "whitespace", "morpheme"]


def get_tokenizer(tokenizer: str | RougeTokenizer) -> RougeTokenizer:
    """The tokenizer registered as ``tokenizer`` (``mecab``, ``kiwi``, ``whitespace``), or ``tokenizer`` itself."""
    if isinstance(tokenizer, str):
        name = TOKENIZER_ALIASES.get(tokenizer, tokenizer)
        if name not in TOKENIZERS:
            raise ValueError(f"Unknown ROUGE tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}.")
        return TOKENIZERS[name]()
    if not isinstance(tokenizer, RougeTokenizer):
        raise TypeError(f"A ROUGE tokenizer needs a .tokenize(text) method; got {type(tokenizer).__name__}.")
    return tokenizer


def tokenizer_name(tokenizer: RougeTokenizer) -> str:
    """The registry name of a tokenizer object, else its class name."""
    return str(getattr(tokenizer, "name", type(tokenizer).__name__))
