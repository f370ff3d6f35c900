"""`python -m dsum.eval.score`: reading submission and gold CSVs, fname matching, errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dsum.eval.score import main, score_files
from tests.conftest import command_fails, help_text

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "data" / "sample" / "dev.csv", REPO.parent / "shared" / "data" / "dev.csv"]
FALLBACK = pd.DataFrame(
    {
        "fname": ["dev_0", "dev_1", "dev_2", "dev_5"],
        "summary": [
            "#Person2#는 숨쉬기 어려워합니다. 의사는 천식 검사를 권합니다.",
            "#Person1#는 Jimmy를 운동하러 초대합니다.",
            "#Person1#은 건강한 식단을 #Person2#에게 공유합니다.",
            "두 사람은 #Address#에서 만나기로 합니다.",
        ],
    }
)


@pytest.fixture()
def gold(tmp_path: Path) -> Path:
    """A small labelled file: the first rows of the bundled or shared dev set, else a built-in one."""
    source = next((p for p in SOURCES if p.is_file()), None)
    frame = pd.read_csv(source, dtype=str, keep_default_na=False).head(20) if source else FALLBACK
    path = tmp_path / "gold.csv"
    frame[["fname", "summary"]].to_csv(path, index=False)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "dsum.eval.score", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def test_cli_scores_a_file_against_itself_as_100(gold: Path) -> None:
    done = run_cli("--pred", str(gold), "--gold", str(gold))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["rouge_mean"] == result["rouge1"] == result["rouge2"] == result["rougeL"] == 100.0
    assert result["count"] == len(pd.read_csv(gold))
    # The official-style metric by default, and its settings in the JSON.
    assert result["metric"] == {"name": "rouge", "tokenizer": "mecab", "references": "mean", "scale": 100}


def test_cli_options_choose_tokenizer_and_reference_rule(
    gold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pd.read_csv(gold, dtype=str, keep_default_na=False)
    pred = frame.assign(summary=frame["summary"].str.replace("니다", "니다 그리고", regex=False))
    pred_path = tmp_path / "pred.csv"
    pred.to_csv(pred_path, index=False)
    results = {}
    for tokenizer in ("mecab", "whitespace"):
        main(["--pred", str(pred_path), "--gold", str(gold), "--tokenizer", tokenizer, "--references", "max"])
        results[tokenizer] = json.loads(capsys.readouterr().out)
        assert results[tokenizer]["metric"]["tokenizer"] == tokenizer
        assert results[tokenizer]["metric"]["references"] == "max"
        assert 0 < results[tokenizer]["rouge_mean"] < 100
    assert results["mecab"]["rouge1"] != results["whitespace"]["rouge1"]
    with pytest.raises(SystemExit):
        main(["--pred", str(pred_path), "--gold", str(gold), "--references", "median"])
    assert "invalid choice: 'median'" in capsys.readouterr().err


def test_cli_mismatch_lists_missing_and_extra_fnames_without_traceback(gold: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(gold, dtype=str, keep_default_na=False)
    pred = frame.iloc[2:].copy()
    pred.loc[len(frame)] = ["test_99", "요약문입니다."]
    pred_path = tmp_path / "pred.csv"
    pred.to_csv(pred_path, index=False)

    done = run_cli("--pred", str(pred_path), "--gold", str(gold))
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert str(pred_path) in done.stderr and str(gold) in done.stderr
    first, second = frame["fname"].iloc[0], frame["fname"].iloc[1]
    assert f"2 missing: {first}, {second}" in done.stderr
    assert "1 not in the gold file: test_99" in done.stderr


def test_bom_and_unnamed_index_column_are_tolerated(gold: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(gold, dtype=str, keep_default_na=False)
    pred_path = tmp_path / "submission.csv"
    # The shape of sample_submission.csv, saved by Excel-style tools with a BOM; rows in another order.
    frame.iloc[::-1].reset_index(drop=True).to_csv(pred_path, index=True, encoding="utf-8-sig")
    assert pred_path.read_bytes().startswith(b"\xef\xbb\xbf,fname,summary")
    assert score_files(pred_path, gold)["rouge_mean"] == 100.0


def test_extra_reference_columns_mean_or_max(tmp_path: Path) -> None:
    gold = tmp_path / "gold.csv"
    pd.DataFrame(
        {
            "fname": ["a", "b"],
            "summary": ["#Person1#은 집에 갑니다.", "두 사람은 영화를 봅니다."],
            "summary1": ["#Person1#은 학교에 갑니다.", ""],  # an empty extra reference is skipped
            "summary2": ["전혀 관계없는 문장", "두 사람이 영화를 보러 갑니다."],
        }
    ).to_csv(gold, index=False)
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"fname": ["b", "a"], "summary": ["두 사람이 영화를 보러 갑니다.", "#Person1#은 학교에 갑니다."]}).to_csv(
        pred, index=False
    )
    best = score_files(pred, gold, tokenizer="whitespace", references="max")
    assert best["rouge_mean"] == 100.0
    assert best["count"] == 2
    # The mean over each row's non-empty references: a: 학교 ref 100, 집 ref 3/4 words, unrelated ref 0;
    # b: 두 사람이 ... ref 100 and `두 사람은 영화를 봅니다` (두, 영화를: 2 of 5 / 4 words); the empty one skipped.
    mean = score_files(pred, gold, tokenizer="whitespace")
    a1 = (100 + 100 * 3 / 4 + 0) / 3
    b1 = (100 + 100 * 2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4)) / 2
    assert mean["rouge1"] == pytest.approx((a1 + b1) / 2)
    assert mean["metric"]["references"] == "mean"


def test_kiwi_tokenizer_option(gold: Path) -> None:
    pytest.importorskip("kiwipiepy")
    result = score_files(gold, gold, tokenizer="kiwi")
    assert result["rouge_mean"] == 100.0
    assert result["metric"]["tokenizer"] == "kiwi"


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return command_fails(main, capsys, *args)


def test_duplicate_fnames_are_rejected(gold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = pd.read_csv(gold, dtype=str, keep_default_na=False)
    pred_path = tmp_path / "pred.csv"
    pd.concat([frame, frame.iloc[[3]]]).to_csv(pred_path, index=False)
    message = _fails(capsys, "--pred", str(pred_path), "--gold", str(gold))
    assert str(pred_path) in message
    assert f"1 duplicate fname(s): {frame['fname'].iloc[3]} (data rows 4, {len(frame) + 1})" in message


def test_missing_columns_and_files_name_the_file(gold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_summary = tmp_path / "pred.csv"
    pd.DataFrame({"fname": ["dev_0"], "text": ["요약"]}).to_csv(no_summary, index=False)
    message = _fails(capsys, "--pred", str(no_summary), "--gold", str(gold))
    assert str(no_summary) in message and "missing column(s) summary" in message and "found fname, text" in message

    absent = tmp_path / "absent.csv"
    message = _fails(capsys, "--pred", str(gold), "--gold", str(absent))
    assert f"{absent}: gold file not found" in message


def test_empty_gold_summary_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = tmp_path / "gold.csv"
    pd.DataFrame({"fname": ["a", "b"], "summary": ["요약", ""]}).to_csv(gold, index=False)
    message = _fails(capsys, "--pred", str(gold), "--gold", str(gold))
    assert f"{gold}: empty 'summary'" in message and "data rows 2" in message


def test_empty_predictions_score_zero_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = tmp_path / "gold.csv"
    pd.DataFrame({"fname": ["a", "b"], "summary": ["오늘 날씨가 좋다", "내일 비가 온다"]}).to_csv(gold, index=False)
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"fname": ["a", "b"], "summary": ["오늘 날씨가 좋다", ""]}).to_csv(pred, index=False)
    main(["--pred", str(pred), "--gold", str(gold)])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rouge_mean"] == pytest.approx(50.0)
    assert "1 empty prediction(s)" in captured.err


def test_nan_like_references_are_not_scored_against_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gold = tmp_path / "gold.csv"
    pd.DataFrame(
        {
            "fname": ["a", "b", "c"],
            "summary": ["오늘 날씨가 좋다", "NaN", "내일 비가 온다"],
            "summary1": ["nan", "두 사람이 만난다", "N/A"],
            "summary2": ["", "None", " null "],
        }
    ).to_csv(gold, index=False)
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"fname": ["a", "b", "c"], "summary": ["오늘 날씨가 좋다", "두 사람이 만난다", "내일 비가 온다"]}).to_csv(
        pred, index=False
    )
    main(["--pred", str(pred), "--gold", str(gold), "--tokenizer", "whitespace"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rouge_mean"] == 100.0  # each prediction against its one real reference
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 3
    assert f"warning: {gold}: 1 'summary' value(s) like NaN or N/A (data rows 2)" in warnings[0]
    assert f"warning: {gold}: 2 'summary1' value(s) like NaN or N/A (data rows 1, 3)" in warnings[1]
    assert f"warning: {gold}: 2 'summary2' value(s) like NaN or N/A (data rows 2, 3)" in warnings[2]


def test_a_row_with_no_real_reference_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = tmp_path / "gold.csv"
    pd.DataFrame({"fname": ["a", "b"], "summary": ["요약", "N/A"], "summary1": ["", "nan"]}).to_csv(gold, index=False)
    message = _fails(capsys, "--pred", str(gold), "--gold", str(gold), "--tokenizer", "whitespace")
    assert f"{gold}: no reference left in data rows 2" in message
    assert "summary, summary1" in message


def test_the_output_has_mask_fidelity_and_length_ratio(tmp_path: Path) -> None:
    gold = tmp_path / "gold.csv"
    pd.DataFrame({"fname": ["a", "b"], "summary": ["#Person1#이 #Person2#에게 말한다.", "#Person2#가 간다."]}
                 ).to_csv(gold, index=False)
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"fname": ["a", "b"], "summary": ["#Person1#이 말한다.", "#Person1#이 #Email#로 간다."]}
                 ).to_csv(pred, index=False)
    result = score_files(pred, gold, tokenizer="whitespace")
    # Predicted 1 + 2 masks, of which 1 is right; the references hold 2 + 1.
    assert result["mask_precision"] == pytest.approx(1 / 3) and result["mask_recall"] == pytest.approx(1 / 3)
    assert result["mask_f1"] == pytest.approx(1 / 3)
    chars = lambda texts: sum(len(t.replace(" ", "")) for t in texts)  # noqa: E731
    assert result["length_ratio"] == pytest.approx(
        chars(["#Person1#이 말한다.", "#Person1#이 #Email#로 간다."]) / chars(["#Person1#이 #Person2#에게 말한다.", "#Person2#가 간다."]))


def test_help_lists_every_option_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(main, capsys)
    for option, what in {
        "--pred PRED": "Predictions: CSV with fname,summary.",
        "--gold GOLD": "References: CSV with fname,summary (more references in summary1, summary2, ...).",
        "--tokenizer {mecab,kiwi,whitespace}": "mecab: Mecab-ko morphemes, as the official scorer (default)",
        "--references {mean,max}": "With several references per row: mean (the organizers' rule, default) or max",
    }.items():
        assert f"{option} {what}" in text, option
    assert "(default: mecab)" in text and "(default: mean)" in text


def test_an_unknown_option_is_a_one_line_error(gold: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--pred", str(gold), "--gold", str(gold), "--bogus"])
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if "error" in line] == [
        "error: unrecognized arguments: --bogus"]
