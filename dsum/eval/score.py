"""Score a submission CSV against a labelled CSV: ``python -m dsum.eval.score --pred sub.csv --gold dev.csv``.

Prints one JSON object: ``rouge1``, ``rouge2``, ``rougeL``, ``rouge_mean`` (their mean), all F1 × 100, ``count``,
the fidelity scores (:mod:`dsum.eval.fidelity`) and ``metric``: the metric's settings (:func:`metric_settings`).
Problems with the files exit non-zero with a message that names the file, and no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from jsonargparse import ArgumentParser

from dsum.data.io import reference_columns
from dsum.eval.fidelity import fidelity_scores
from dsum.eval.metrics import REFERENCE_RULES, metric_settings, rouge_scores
from dsum.eval.tokenizers import DEFAULT_TOKENIZER, TOKENIZERS
from dsum.infra.log import every_rank, warn

MAX_LISTED = 5
# Cells that mean "no value" after a round trip through pandas, Excel or `str(None)` (compared lowercased,
# stripped): read as text (`keep_default_na=False`) they would otherwise be scored as reference summaries.
MISSING_MARKERS = frozenset({"nan", "-nan", "n/a", "na", "#n/a", "<na>", "none", "null"})


class ScoreError(ValueError):
    """A prediction or gold file that cannot be scored; the message names the file."""


def _listing(items: Sequence[str]) -> str:
    """``a, b, c (+7 more)``"""
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _read_table(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    """Read a CSV as strings only (empty cells stay ``""``), tolerating a BOM and an unnamed index column."""
    if not path.is_file():
        raise ScoreError(f"{path}: {what} file not found.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ScoreError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start}); re-save it as UTF-8.") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ScoreError(f"{path}: not a readable CSV ({err}).") from err
    # sample_submission.csv carries a leading unnamed index column.
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed:")]]
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ScoreError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns) or 'none'}. "
            f"A {what} file needs {', '.join(required)}."
        )
    if frame.empty:
        raise ScoreError(f"{path}: header only, no rows to score.")
    frame["fname"] = frame["fname"].str.strip()
    duplicated = frame["fname"][frame["fname"].duplicated(keep=False)]
    if not duplicated.empty:
        names = list(dict.fromkeys(duplicated.tolist()))
        rows = [str(i + 1) for i in duplicated.index]
        raise ScoreError(
            f"{path}: {len(names)} duplicate fname(s): {_listing(names)} (data rows {_listing(rows)}). "
            "Each example must appear once."
        )
    return frame


def is_missing_marker(value: str) -> bool:
    """Whether a cell holds a "no value" marker such as ``NaN``, ``nan``, ``N/A`` or ``None``."""
    return value.strip().lower() in MISSING_MARKERS


def read_gold(path: Path) -> dict[str, list[str]]:
    """fname -> references (``summary``, then ``summary1``, ``summary2``, ... where not empty), in file order.

    A reference that is a missing-value marker (``NaN``, ``N/A`` ...: :data:`MISSING_MARKERS`) is not scored
    against, with a warning per column that names its rows; a row left with no reference is an error.
    """
    frame = _read_table(path, ["fname", "summary"], "gold")
    empty = [str(i + 1) for i, s in enumerate(frame["summary"].tolist()) if not s.strip()]
    if empty:
        raise ScoreError(f"{path}: empty 'summary' (the first reference) in data rows {_listing(empty)}.")
    columns = reference_columns(list(frame.columns))
    for column in columns:
        marked = [str(i + 1) for i, value in enumerate(frame[column].tolist()) if is_missing_marker(value)]
        if marked:
            warn(f"warning: {path}: {len(marked)} '{column}' value(s) like NaN or N/A (data rows "
                 f"{_listing(marked)}), treated as missing references and not scored against.")
    gold = {
        row["fname"]: [row[c] for c in columns if row[c].strip() and not is_missing_marker(row[c])]
        for row in frame[["fname", *columns]].to_dict("records")
    }
    unreferenced = [str(i + 1) for i, refs in enumerate(gold.values()) if not refs]
    if unreferenced:
        raise ScoreError(
            f"{path}: no reference left in data rows {_listing(unreferenced)}: every one of "
            f"{', '.join(columns)} is empty or a missing-value marker (NaN, N/A ...)."
        )
    return gold


def read_predictions(path: Path) -> dict[str, str]:
    """fname -> predicted summary, in file order. Empty summaries are allowed (they score 0)."""
    frame = _read_table(path, ["fname", "summary"], "prediction")
    return dict(zip(frame["fname"], frame["summary"]))


def score_files(
    pred: str | Path, gold: str | Path, tokenizer: str = DEFAULT_TOKENIZER, references: str = "mean"
) -> dict[str, Any]:
    """ROUGE × 100 and fidelity of a prediction CSV against a gold CSV (as :func:`main`'s options describe them),
    matched by ``fname``, with the metric's settings.

    Raises:
        ScoreError: A file is missing, unreadable, lacks columns, has duplicate fnames, a gold row has no
            reference (empty or ``NaN``/``N/A`` in every reference column), or the two files' fnames differ.
    """
    pred, gold = Path(pred), Path(gold)
    settings = metric_settings(tokenizer, references)  # bad settings fail before the files are read
    gold_refs = read_gold(gold)
    predictions = read_predictions(pred)
    missing = [f for f in gold_refs if f not in predictions]
    extra = [f for f in predictions if f not in gold_refs]
    if missing or extra:
        parts = [f"{len(missing)} missing: {_listing(missing)}"] if missing else []
        parts += [f"{len(extra)} not in the gold file: {_listing(extra)}"] if extra else []
        raise ScoreError(f"{pred}: fnames do not match {gold}; {'; '.join(parts)}.")
    empty = sum(1 for f in gold_refs if not predictions[f].strip())
    if empty:
        warn(f"warning: {pred}: {empty} empty prediction(s), scored 0.")
    fnames = list(gold_refs)
    preds, refs = [predictions[f] for f in fnames], [gold_refs[f] for f in fnames]
    result: dict[str, Any] = dict(rouge_scores(preds, refs, tokenizer, references))
    result.update(fidelity_scores(preds, refs))  # mask precision / recall / F1, length ratio
    result["metric"] = settings
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: parse arguments, score, print one JSON object."""
    parser = ArgumentParser(
        prog="python -m dsum.eval.score",
        description="Score a submission CSV against a labelled CSV with Korean-aware ROUGE-1/2/L F1 (x 100).",
    )
    parser.add_argument("--pred", type=Path, required=True, help="Predictions: CSV with fname,summary.")
    parser.add_argument(
        "--gold", type=Path, required=True,
        help="References: CSV with fname,summary (more references in summary1, summary2, ...).",
    )
    parser.add_argument(
        "--tokenizer", choices=list(TOKENIZERS), default=DEFAULT_TOKENIZER,
        help="mecab: Mecab-ko morphemes, as the official scorer (default); kiwi: Kiwi morphemes (needs "
             "kiwipiepy); whitespace: Unicode words. #masks# are one token in all three.",
    )
    parser.add_argument(
        "--references", choices=list(REFERENCE_RULES), default="mean",
        help="With several references per row: mean (the organizers' rule, default) or max, per ROUGE type.",
    )
    args = parser.parse_args(argv)
    try:
        result = score_files(args.pred, args.gold, args.tokenizer, args.references)
    except (ScoreError, ImportError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    every_rank()  # a tool, not one rank of a training job: its messages show on every node
    main()
