"""The bundled sample data (data/sample) has the competition's format and a learnable summary signal."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dsum.data.io import read_dialogue_csv

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
COLUMNS = {"train": ["fname", "dialogue", "summary", "topic"], "dev": ["fname", "dialogue", "summary", "topic"],
           "test": ["fname", "dialogue"]}
TURN = re.compile(r"^#Person\d#: \S")
MASK = re.compile(r"#[A-Za-z]+\d*#")


def load(split: str) -> pd.DataFrame:
    return pd.read_csv(SAMPLE / f"{split}.csv", dtype=str, keep_default_na=False, encoding="utf-8")


def summary_word_overlap(summary: str, dialogue: str) -> float:
    """Share of the summary's words, #PersonN# words excluded, found in the dialogue (a word still counts
    when only its one-syllable particle differs, e.g. '카드로' vs '카드')."""
    words = [w.strip(".,!?") for w in summary.split() if "#Person" not in w]
    words = [w for w in words if w]
    found = [w in dialogue or (len(w) > 2 and w[:-1] in dialogue) for w in words]
    return sum(found) / len(found) if found else 1.0


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_columns_ids_and_non_empty_text(split: str) -> None:
    frame = load(split)
    assert list(frame.columns) == COLUMNS[split]
    assert len(frame) >= 50
    assert frame["fname"].is_unique
    assert frame["fname"].str.fullmatch(rf"{split}_\d+").all()
    for column in COLUMNS[split][1:3]:
        assert (frame[column].str.strip() != "").all(), f"empty {column} in {split}"


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_readable_by_dsum_io(split: str) -> None:
    table = read_dialogue_csv(SAMPLE / f"{split}.csv", labelled=split != "test")
    assert len(table) == len(load(split))
    assert table.labelled is (split != "test")


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_dialogue_lines_and_lengths(split: str) -> None:
    dialogues = load(split)["dialogue"]
    lines = [line for d in dialogues for line in d.split("\n")]
    bad = [line for line in lines if not TURN.match(line)]
    assert not bad, f"{len(bad)} lines in {split} are not '#PersonN#: text', e.g. {bad[:2]}"
    assert any(line.endswith(" ") for line in lines), "the real data has lines with a trailing space"
    turns = dialogues.str.count("\n") + 1
    assert turns.between(2, 29).all() and 8 <= turns.mean() <= 11
    assert 300 <= dialogues.str.len().mean() <= 500


def test_multiline_fields_are_quoted_utf8() -> None:
    raw = (SAMPLE / "train.csv").read_bytes().decode("utf-8")
    assert raw.startswith("fname,dialogue,summary,topic\n")
    assert '"#Person1#: ' in raw and "\r" not in raw


def test_masks_beyond_person_appear() -> None:
    frame = pd.concat([load("train"), load("dev")])
    in_dialogues = set(MASK.findall(" ".join(frame["dialogue"])))
    in_summaries = set(MASK.findall(" ".join(frame["summary"])))
    others = {"#PhoneNumber#", "#Address#", "#DateOfBirth#", "#PassportNumber#", "#Email#"}
    assert others <= in_dialogues
    assert others & in_summaries
    assert {"#Person1#", "#Person2#"} <= in_summaries
    assert "#Person3#" in in_dialogues


def test_summaries_follow_from_dialogues() -> None:
    frame = pd.concat([load("train"), load("dev")])
    overlap = [summary_word_overlap(s, d) for s, d in zip(frame["summary"], frame["dialogue"])]
    majority = sum(o > 0.5 for o in overlap) / len(overlap)
    assert majority >= 0.9, f"only {majority:.0%} of summaries mostly reuse dialogue words"
    assert 60 <= frame["summary"].str.len().mean() <= 110


def test_generator_reproduces_bundled_files(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "make_sample_data.py"
    cmd = [sys.executable, str(script), "--out", str(tmp_path), "--seed", "0", "--compare", str(tmp_path / "none")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    for split in COLUMNS:
        assert (tmp_path / f"{split}.csv").read_bytes() == (SAMPLE / f"{split}.csv").read_bytes(), (
            f"data/sample/{split}.csv is stale: rerun `python scripts/make_sample_data.py --out data/sample --seed 0`"
        )
