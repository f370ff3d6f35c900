"""Korean-aware ROUGE (tokenizers, a one-shot scorer, a DDP-synced ``Metric``) and a de-duplicated mean.

Scores follow rouge-score's algorithm (``RougeScorer`` with ``rouge1``, ``rouge2``, ``rougeL``): F1 per
example, then the plain mean over examples. What differs is the tokenizer. rouge-score's default one
deletes every character outside ``[a-z0-9]``, so on Korean it scores only the ``#Person1#`` fragments;
both tokenizers here keep Hangul and keep ``#...#`` masks whole.

Multiple references: per ROUGE type, an example scores the best F1 over its references, each type
choosing its reference independently (rouge-score's ``score_multi``, the same max rule as the ``rouge``
package's multi-reference mode).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from rouge_score.rouge_scorer import RougeScorer
from torchmetrics import Metric

# `#Person1#`, `#PhoneNumber#`, ...: anonymisation masks, scored as single tokens (one definition for data and metric).
from dsum.data.text import MASK_PATTERN

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
# Anything that is not a letter or digit in any script (underscore counts as punctuation here).
_NON_WORD = re.compile(r"[\W_]+")
_MORPHEME_MISSING = (
    "The 'morpheme' ROUGE tokenizer needs kiwipiepy: pip install kiwipiepy  (or: pip install 'dsum[morpheme]')"
)

References = Sequence[str] | Sequence[Sequence[str]]


@runtime_checkable
class RougeTokenizer(Protocol):
    """What ``RougeScorer`` needs from a tokenizer."""

    def tokenize(self, text: str) -> list[str]: ...


def _words(text: str) -> list[str]:
    """rouge-score's normalisation, Unicode-aware: lowercase, non letters/digits become spaces, split."""
    return _NON_WORD.sub(" ", text.lower()).split()


class WhitespaceTokenizer:
    """Unicode words; ``#...#`` masks kept whole and lowercased.

    ``"#Person1#은 집에 갔다."`` becomes ``["#person1#", "은", "집에", "갔다"]``. Text is NFC-normalised
    first so that composed and decomposed Hangul (e.g. from macOS file names) compare equal.
    """

    name = "whitespace"

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text)
        tokens: list[str] = []
        start = 0
        for mask in MASK_PATTERN.finditer(text):
            tokens += _words(text[start : mask.start()])
            tokens.append(mask.group().lower())
            start = mask.end()
        tokens += _words(text[start:])
        return tokens

    def __repr__(self) -> str:
        return "WhitespaceTokenizer()"


@functools.lru_cache(maxsize=1)
def _kiwi() -> Any:
    """The process-wide Kiwi analyser: loading its model takes about 1.5 s, so it is built once."""
    try:
        from kiwipiepy import Kiwi
    except ImportError as err:
        raise ImportError(_MORPHEME_MISSING) from err
    return Kiwi()


def _mask_spans(text: str) -> list[tuple[int, int, str]]:
    # Kiwi would split `#Person1#은` into `#Person1` + `#은`; pre-tokenized spans stay one proper noun.
    return [(m.start(), m.end(), "NNP") for m in MASK_PATTERN.finditer(text)]


class MorphemeTokenizer:
    """Kiwi morphemes (the analysed forms, so 했 becomes 하 + 었; lowercased), masks kept whole.

    ``"#Person1#은 전화했다."`` becomes ``["#person1#", "은", "전화", "하", "었", "다"]``. Tokens with no letter
    or digit (punctuation, symbols) are dropped, as the whitespace tokenizer drops them too. Needs the
    optional ``kiwipiepy`` package; the Kiwi model is loaded on first use and shared by all instances.
    """

    name = "morpheme"

    def __init__(self) -> None:
        # Fail when the metric is built, not after the first validation epoch.
        if importlib.util.find_spec("kiwipiepy") is None:
            raise ImportError(_MORPHEME_MISSING)

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text)
        morphemes = _kiwi().tokenize(text, pretokenized=_mask_spans(text))
        return [form for form in (m.form.lower() for m in morphemes) if not _NON_WORD.fullmatch(form)]

    def __repr__(self) -> str:
        return "MorphemeTokenizer()"


TOKENIZERS: dict[str, Callable[[], RougeTokenizer]] = {
    "whitespace": WhitespaceTokenizer,
    "morpheme": MorphemeTokenizer,
}


def get_tokenizer(tokenizer: str | RougeTokenizer) -> RougeTokenizer:
    """The tokenizer registered as ``tokenizer`` (``whitespace``, ``morpheme``), or ``tokenizer`` itself."""
    if isinstance(tokenizer, str):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"Unknown ROUGE tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}.")
        return TOKENIZERS[tokenizer]()
    if not isinstance(tokenizer, RougeTokenizer):
        raise TypeError(f"A ROUGE tokenizer needs a .tokenize(text) method; got {type(tokenizer).__name__}.")
    return tokenizer


class _MemoTokenizer:
    """Tokenizes each distinct text once per call (``score_multi`` re-tokenizes the prediction per reference)."""

    def __init__(self, tokenizer: RougeTokenizer) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        if text not in self._cache:
            self._cache[text] = self._tokenizer.tokenize(text)
        return self._cache[text]


def _as_reference_lists(preds: Sequence[str], refs: References) -> list[list[str]]:
    """Check the inputs line up and give every example a non-empty list of reference strings."""
    if isinstance(preds, str) or isinstance(refs, str):
        raise TypeError("preds and refs must be sequences of strings (one per example), not a single string.")
    if len(preds) != len(refs):
        raise ValueError(f"Got {len(preds)} predictions but {len(refs)} references; need one entry per example.")
    lists = []
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        if not isinstance(pred, str):
            raise TypeError(f"Prediction {i} is a {type(pred).__name__}, expected a string.")
        ref_list = [ref] if isinstance(ref, str) else list(ref)
        if not ref_list or not all(isinstance(r, str) for r in ref_list):
            raise ValueError(f"Example {i}: expected a reference string or a non-empty list of them, got {ref!r}.")
        lists.append(ref_list)
    return lists


def score_examples(
    preds: Sequence[str], refs: References, tokenizer: str | RougeTokenizer = "whitespace"
) -> np.ndarray:
    """Per-example ROUGE-1/2/L F1, shape ``(n, 3)``.

    Args:
        preds: One predicted summary per example.
        refs: Per example, one reference string or a list of references (best F1 per ROUGE type counts).
        tokenizer: Registry name or an object with ``.tokenize(text) -> list[str]``.
    """
    ref_lists = _as_reference_lists(preds, refs)
    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=_MemoTokenizer(get_tokenizer(tokenizer)))
    scores = np.zeros((len(preds), len(ROUGE_TYPES)), dtype=np.float64)
    for i, (pred, ref_list) in enumerate(zip(preds, ref_lists)):
        best = scorer.score_multi(ref_list, pred)
        scores[i] = [best[t].fmeasure for t in ROUGE_TYPES]
    return scores


def summarize(scores: np.ndarray) -> dict[str, float | int]:
    """Mean F1 per ROUGE type, ``rouge_mean`` (mean of the three × 100, the leaderboard scale) and ``count``.

    With no examples every score is 0.0 and ``count`` is 0 (not NaN, so "best so far" trackers and
    checkpoint monitors keep working).
    """
    if len(scores) == 0:
        return {**{t: 0.0 for t in ROUGE_TYPES}, "rouge_mean": 0.0, "count": 0}
    means = scores.mean(axis=0)
    result: dict[str, float | int] = {t: float(m) for t, m in zip(ROUGE_TYPES, means)}
    result["rouge_mean"] = float(means.mean() * 100.0)
    result["count"] = len(scores)
    return result


def rouge_scores(
    preds: Sequence[str], refs: References, tokenizer: str | RougeTokenizer = "whitespace"
) -> dict[str, float | int]:
    """ROUGE over a whole set at once; keys as :func:`summarize` (the CLI scorer uses this).

    Args:
        preds: One predicted summary per example.
        refs: Per example, one reference string or a list of references (best F1 per ROUGE type counts).
        tokenizer: ``whitespace`` (default), ``morpheme`` (Kiwi), or an object with ``.tokenize``.
    """
    return summarize(score_examples(preds, refs, tokenizer))


class _Float64Metric(Metric):
    """A ``Metric`` whose ``cat`` states are float64 on every rank.

    torchmetrics resets ``dtype`` to float32 whenever the metric is moved (Lightning's ``.to(device)``), and
    a rank that saw no examples sends an empty tensor of that dtype to the all-gather. Under NCCL a float32
    tensor among float64 ones is a size mismatch, so the dtype is pinned here.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_dtype(torch.float64)

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> Metric:
        this = super()._apply(fn, exclude_state)
        this._dtype = torch.float64
        return this


class KoreanRouge(_Float64Metric):
    """ROUGE-1/2/L F1 with a Korean-aware tokenizer, synced across DDP ranks and de-duplicated by example.

    Evaluation samplers (``DistributedSampler``) pad shards with repeated examples, so the state is kept
    per example, as ``(index, rouge1, rouge2, rougeL)`` float64 rows gathered with ``cat``; ``compute``
    keeps the first row of each dataset index and averages. ``compute`` returns plain Python numbers:
    ``rouge1``, ``rouge2``, ``rougeL`` (F1 in [0, 1]), ``rouge_mean`` (mean of the three × 100) and
    ``count`` (unique examples). With no examples every score is 0.0 and ``count`` is 0.

    Args:
        tokenizer: ``whitespace`` (Unicode words, masks kept whole) or ``morpheme`` (Kiwi morphemes), or an
            object with ``.tokenize(text) -> list[str]``.
        kwargs: Passed to ``torchmetrics.Metric`` (e.g. ``compute_on_cpu``, ``process_group``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tokenizer: str | RougeTokenizer = "whitespace", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenizer = get_tokenizer(tokenizer)
        for state in ("indices", *ROUGE_TYPES):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(
        self, preds: Sequence[str], targets: References, indices: torch.Tensor | Sequence[int] | None = None
    ) -> None:
        """Score a batch.

        Args:
            preds: One predicted summary per example.
            targets: Per example, one reference string or a list of references.
            indices: Dataset index of each example, used to drop padded duplicates across ranks. Without
                it, examples are never de-duplicated (positions within a batch would collide across
                batches and ranks).
        """
        scores = score_examples(preds, targets, self.tokenizer)
        if indices is None:
            index = np.full(len(preds), -1.0)
        else:
            values = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
            index = np.asarray(values, dtype=np.float64)
            if index.shape != (len(preds),):
                raise ValueError(f"Got {index.size} indices for {len(preds)} predictions; need one per example.")
            if (index < 0).any():
                raise ValueError(f"Dataset indices must be >= 0; got {index.min():g}.")
        device = _state_device(self)
        self.indices.append(torch.as_tensor(index, dtype=torch.float64, device=device))
        for column, rouge_type in enumerate(ROUGE_TYPES):
            state = getattr(self, rouge_type)
            state.append(torch.as_tensor(scores[:, column], dtype=torch.float64, device=device))

    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        index = _state_array(self.indices)
        scores = np.stack([_state_array(getattr(self, t)) for t in ROUGE_TYPES], axis=1)
        return index, scores

    def compute(self) -> dict[str, float | int]:
        index, scores = self._rows()
        return summarize(scores[first_of_each_index(index)])


class PooledMean(_Float64Metric):
    """``sum(totals) / sum(counts)`` over examples, synced across DDP ranks, each dataset index counted once.

    Evaluation batches are padded with repeated examples so that every DDP rank runs the same number of
    steps; a plain ``MeanMetric`` would count those twice. Here every update brings one row per example,
    ``(index, total, count)``, gathered with ``cat``; ``compute`` keeps the first row of each index.

    - Per-token mean loss: ``totals`` = summed token losses of each example, ``counts`` = its tokens.
      The result does not depend on how examples were batched.
    - Per-example mean (e.g. generated length): ``counts`` = 1 (the default).

    ``compute`` returns a Python float, NaN when no counts were seen.

    Args:
        kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for state in ("indices", "totals", "counts"):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(
        self,
        totals: torch.Tensor,
        indices: torch.Tensor | Sequence[int],
        counts: torch.Tensor | None = None,
    ) -> None:
        """Add one row per example.

        Args:
            totals: Per example, the quantity to average (shape ``(n,)``).
            indices: Dataset index of each example (``>= 0``); repeats across updates and ranks count once.
            counts: Per example, what ``totals`` is a sum over (e.g. tokens); ones when omitted.
        """
        totals = totals.detach().reshape(-1)
        index = torch.as_tensor(indices).detach().reshape(-1)
        counts = torch.ones_like(totals) if counts is None else counts.detach().reshape(-1)
        if not len(index) == len(totals) == len(counts):
            raise ValueError(
                f"PooledMean needs one index, total and count per example; got {len(index)} indices, "
                f"{len(totals)} totals and {len(counts)} counts"
            )
        if len(index) and int(index.min()) < 0:
            raise ValueError(f"Dataset indices must be >= 0; got {int(index.min())}.")
        device = _state_device(self)
        for state, values in (("indices", index), ("totals", totals), ("counts", counts)):
            getattr(self, state).append(values.to(device=device, dtype=torch.float64))

    def compute(self) -> float:
        keep = first_of_each_index(_state_array(self.indices))
        count = _state_array(self.counts)[keep].sum()
        return float(_state_array(self.totals)[keep].sum() / count) if count > 0 else float("nan")


def first_of_each_index(index: np.ndarray) -> np.ndarray:
    """Row positions to keep, in order: the first row of every index ``>= 0`` and every row with index ``< 0``."""
    anonymous = index < 0
    _, first = np.unique(index[~anonymous], return_index=True)
    return np.sort(np.concatenate([np.flatnonzero(~anonymous)[first], np.flatnonzero(anonymous)]))


def _state_array(state: list[torch.Tensor] | torch.Tensor) -> np.ndarray:
    """A ``cat`` state (a list before syncing, a tensor after) as a flat float64 array."""
    if isinstance(state, list):
        state = torch.cat(state) if state else torch.zeros(0, dtype=torch.float64)
    return state.detach().cpu().double().numpy().reshape(-1)


def _state_device(metric: Metric) -> torch.device:
    """Where a float64 state can live: MPS has no float64, and these states are small and read on the host."""
    return metric.device if metric.device.type != "mps" else torch.device("cpu")
