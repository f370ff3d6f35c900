"""Reading competition CSVs, with errors that name the file, the rows and what to do.

Bad rows raise :class:`DataError` or, with ``on_bad_rows="skip"``, are dropped with a logged count; never silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from dsum.data.text import is_blank
from dsum.infra.log import warn

BadRowPolicy = Literal["error", "skip"]
MAX_LISTED_ROWS = 5
# What an empty cell becomes after a round trip through pandas, Excel or `str(None)`.
_EMPTY_VALUES = frozenset({"", "nan", "NaN", "NAN", "None", "null", "NULL"})


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file and the rows."""


@dataclass(frozen=True)
class DialogueTable:
    """One validated CSV split, in file order: raw (not yet normalised) dialogues; per example the reference
    summaries (``summary``, ``summary1``, ...; empty for an unlabelled split); the rows skipped under
    ``on_bad_rows="skip"``; the SHA-256 of the bytes parsed (the tokenization cache's key)."""

    path: Path
    fnames: list[str]
    dialogues: list[str]
    references: list[list[str]]
    skipped: int = 0
    sha256: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.references) and all(self.references)

    def __len__(self) -> int:
        return len(self.fnames)


def _row_list(rows: list[int]) -> str:
    """`rows 3, 8, 9 (+12 more)` for 0-based indices: 1-based data-row numbers, header excluded."""
    shown = ", ".join(str(r + 1) for r in rows[:MAX_LISTED_ROWS])
    more = f" (+{len(rows) - MAX_LISTED_ROWS} more)" if len(rows) > MAX_LISTED_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _read_frame(path: Path) -> tuple[pd.DataFrame, str]:
    """The CSV as strings, and the SHA-256 of the bytes parsed (the file is read once)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the data paths in your config (data.*_file).")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 (byte {err.start}, line {line}). "
            "Re-save the file as UTF-8, e.g. `iconv -f cp949 -t utf-8 in.csv > out.csv`."
        ) from err
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; expected a header line and data rows.")
    try:
        # Strings only, no NaN guessing: an empty cell is "" and is reported below, never dropped.
        frame = pd.read_csv(
            io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV ({err}).") from err
    # A leading unnamed index column, as in sample_submission.csv, carries no data.
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed:")]]
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, hashlib.sha256(raw).hexdigest()


def reference_columns(columns: list[str]) -> list[str]:
    """`summary` then `summary1`, `summary2`, ... in numeric order: the reference columns of a gold file."""
    extra = sorted(
        (c for c in columns if c.startswith("summary") and c[len("summary") :].isdigit()),
        key=lambda c: int(c[len("summary") :]),
    )
    return (["summary"] if "summary" in columns else []) + extra


def read_dialogue_csv(path: str | Path, labelled: bool, on_bad_rows: BadRowPolicy = "error") -> DialogueTable:
    """Read and validate one competition CSV: ``fname,dialogue`` and, when ``labelled``, ``summary`` (more references
    in ``summary1``, ...); UTF-8 with or without BOM, quoted multi-line fields. ``on_bad_rows="skip"`` drops rows with
    empty text or duplicate ids (logging how many) instead of raising; missing columns and bad encodings always raise.
    """
    path = Path(path)
    frame, sha256 = _read_frame(path)
    required = ["fname", "dialogue"] + (["summary"] if labelled else [])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"found {', '.join(frame.columns) or 'none'}. "
            f"A {'labelled' if labelled else 'prediction'} file needs {', '.join(required)}."
        )
    if frame.empty:
        raise DataError(f"{path}: header only, no data rows.")

    problems: list[str] = []
    bad: set[int] = set()
    for column in required:
        values = frame[column].tolist()
        empty = [i for i, v in enumerate(values) if v.strip() in _EMPTY_VALUES]
        if empty:
            bad.update(empty)
            problems.append(f"empty or NaN {column!r} in {_row_list(empty)}")
        invisible = [i for i, v in enumerate(values) if i not in empty and is_blank(v)]
        if invisible:
            bad.update(invisible)
            problems.append(f"{column!r} of only invisible characters (zero-width spaces, ...) in "
                            f"{_row_list(invisible)}")
    fnames = frame["fname"].str.strip()
    duplicated = fnames[fnames.duplicated(keep="first") & (fnames != "")]
    if not duplicated.empty:
        bad.update(duplicated.index.tolist())
        ids = ", ".join(sorted(set(duplicated.tolist()))[:MAX_LISTED_ROWS])
        problems.append(f"duplicate fname ({ids}) in {_row_list(list(duplicated.index))}")
    if problems and on_bad_rows == "error":
        raise DataError(
            f"{path}: {'; '.join(problems)}. Fix these rows, or set data.on_bad_rows=skip to drop them "
            "(the count dropped is logged)."
        )
    if bad:
        warn(f"{path}: skipped {len(bad)} bad row(s) ({'; '.join(problems)})")
        frame = frame.drop(index=sorted(bad)).reset_index(drop=True)
        fnames = frame["fname"].str.strip()

    ref_cols = reference_columns(list(frame.columns)) if labelled else []
    references = [[row[c] for c in ref_cols if row[c].strip()] for row in frame[ref_cols].to_dict("records")]
    return DialogueTable(path, fnames.tolist(), frame["dialogue"].tolist(), references, len(bad), sha256)
