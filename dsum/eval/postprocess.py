"""Post-processing of generated summaries: mask spacing, repeated phrases, an unfinished last sentence.

:class:`PostprocessSettings` is every summarizer's ``model.postprocess`` argument, applied by
``SummarizerBase.decode``, so validation, test and predict score and write the same text. Each option is a config
key and a sweep parameter (``model.postprocess.cut_unfinished`` ...); the steps run in the order of its fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsum.data.text import MASK_PATTERN

# Korean particles that follow a noun (and so a mask) without a space; longer forms first. One or more of
# them make up the whole word after the mask: `#Person2#에게`, `#Person1#과의`, `#Person2#에게는`.
PARTICLES = (
    "에게서", "에게", "께서", "한테", "에서", "으로", "이랑", "만큼", "보다", "처럼", "까지", "부터", "조차", "마저",
    "이나", "님", "은", "는", "이", "가", "을", "를", "의", "과", "와", "도", "만", "께", "에", "로", "랑",
)
# Possessive (`++`): the longest particle is taken at each step and never given back. Backtracking would try
# every split of `이랑이랑…` (`이랑` or `이` + `랑`), exponential in its length; no other split can succeed
# where the longest-first one fails, as no particle but `랑` starts with `랑`.
_PARTICLE_WORD = f"(?:{'|'.join(PARTICLES)})++"
# A mask, whitespace, then a word made only of particles (ending at a space, punctuation or the end).
_SPACED_PARTICLE = re.compile(rf"({MASK_PATTERN.pattern})\s++({_PARTICLE_WORD})(?![가-힣])")

# Sentence ends: . ! ? (also … and full-width forms), then closing quotes/brackets, then whitespace or the
# end (so the period in `3.5` or `a.b` is no sentence end). A match starts only at the first mark of a run
# and takes the run whole (possessive), so a long run of dots is read once, not once per dot.
_END_MARKS = ".!?…。！？"
_CLOSERS = "\"'”’)\\]」』"
_SENTENCE_END = re.compile(rf"(?<![{_END_MARKS}])[{_END_MARKS}]++[{_CLOSERS}]*+(?=\s|$)")
# A sentence may also be finished without its period: a Korean final ending (…다, …요).
_TRAILING_PUNCTUATION = ".,!?…。！？;:" + _CLOSERS
_FINISHING = _END_MARKS + "다요"
# Longest word sequence that `collapse_repeats` looks for right after itself. A summary of at most 128 new
# tokens (the configs' `max_new_tokens`) has at most 128 words, so no repeat in it is longer; the bound keeps
# the work per word constant on degenerate text.
MAX_REPEAT_WORDS = 64


def join_mask_particles(text: str) -> str:
    """Remove the space between a ``#...#`` mask and the particle after it: ``#Person1# 은`` → ``#Person1#은``.

    Only a word made entirely of particles (``은``, ``에게``, ``과의`` ...) is joined; ``#Person1# 모두`` stays.
    """
    return _SPACED_PARTICLE.sub(r"\1\2", text)


def sentences(text: str) -> list[str]:
    """``text`` split after each sentence end (``.``, ``!``, ``?``, ``…``); the pieces keep their punctuation,
    and the last piece is whatever follows the last sentence end (possibly unfinished)."""
    pieces, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        pieces.append(text[start : end.end()].strip())
        start = end.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def cut_unfinished_sentence(text: str) -> str:
    """Drop a trailing unfinished sentence, when a finished one comes before it. A text is finished when it ends with
    sentence punctuation (``. ! ? …``, closing quotes allowed) or a Korean final ending ``다`` / ``요``; a text with
    no sentence end at all is returned unchanged rather than emptied."""
    text = text.strip()
    if not text or text.rstrip(_CLOSERS).endswith(tuple(_FINISHING)):
        return text
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else text


def _collapse_adjacent(words: list[str]) -> list[str]:
    """Keep one copy of any word sequence (up to :data:`MAX_REPEAT_WORDS` words) that repeats right after
    itself, until none does. Words compare without trailing punctuation; the last copy is kept (with its period).

    One pass: each word is appended, and when the kept words now end with a sequence followed by a copy of itself
    (the shortest such), the first copy is dropped. What was kept before has no adjacent repeat, so only the end
    needs checking, and a drop leaves a prefix of that repeat-free text: at most one drop per word.
    """
    kept: list[str] = []
    keys: list[str] = []
    for word in words:
        kept.append(word)
        keys.append(word.rstrip(_TRAILING_PUNCTUATION) or word)
        last, size = keys[-1], len(keys)
        for n in range(1, min(MAX_REPEAT_WORDS, size // 2) + 1):
            if keys[-1 - n] == last and keys[-2 * n : -n] == keys[-n:]:
                del kept[-2 * n : -n], keys[-2 * n : -n]
                break
    return kept


def collapse_repeats(text: str) -> str:
    """Drop sentences that repeat an earlier sentence, then collapse immediately repeated word sequences.

    ``"A는 갔다. B가 왔다. A는 갔다."`` → ``"A는 갔다. B가 왔다."``;
    ``"#Person1#은 집에 집에 갔다"`` → ``"#Person1#은 집에 갔다"``; words compare without trailing punctuation.
    """
    first: dict[str, str] = {}  # each sentence (whitespace normalised) -> its first occurrence
    for sentence in sentences(text):
        first.setdefault(" ".join(sentence.split()), sentence)
    return " ".join(_collapse_adjacent(" ".join(first.values()).split()))


@dataclass(frozen=True)
class PostprocessSettings:
    """Clean-ups applied to every generated summary (validation, test and predict alike).

    Args:
        mask_spacing: Join a mask and its particle (``#Person1# 은`` → ``#Person1#은``), as the references
            write them. The ROUGE tokenizers split both spellings alike, so this changes the text, not the score.
        collapse_repeats: Drop a sentence that repeats an earlier one and keep one copy of a word sequence
            repeated right after itself.
        cut_unfinished: Cut a trailing unfinished sentence (text after the last ``. ! ? …`` that does not end
            in ``다``/``요``), when a finished sentence comes before it.
    """

    mask_spacing: bool = True
    collapse_repeats: bool = False
    cut_unfinished: bool = False

    def __call__(self, text: str) -> str:
        """``text`` with the enabled steps applied, whitespace runs collapsed to one space."""
        text = " ".join(text.split())
        if self.mask_spacing:
            text = join_mask_particles(text)
        if self.collapse_repeats:
            text = collapse_repeats(text)
        if self.cut_unfinished:
            text = cut_unfinished_sentence(text)
        return " ".join(text.split())

    def apply(self, texts: list[str]) -> list[str]:
        """:meth:`__call__` on each text."""
        return [self(text) for text in texts]
