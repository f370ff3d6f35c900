"""CSV reading and validation: every bad input names the file and rows; nothing is dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsum.data.io import DataError, read_dialogue_csv
from tests.conftest import write_csv

HEADER = "fname,dialogue,summary,topic\n"


def test_reads_bom_crlf_and_quoted_multiline(tmp_path: Path) -> None:
    text = HEADER + 'a_0,"#Person1#: 안녕 \r\n#Person2#: 네",요약 하나,인사\r\n' + 'a_1,"#Person1#: x\r\n#Person2#: y","두 줄\r\n요약",t\r\n'
    path = write_csv(tmp_path / "bom.csv", "\ufeff" + text.replace(HEADER, HEADER.replace("\n", "\r\n")))
    table = read_dialogue_csv(path, labelled=True)
    assert table.fnames == ["a_0", "a_1"]
    assert table.dialogues[0].splitlines() == ["#Person1#: 안녕 ", "#Person2#: 네"]
    assert table.references == [["요약 하나"], ["두 줄\r\n요약"]]


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", "fname,dialogue\nx_0,안녕\n")
    with pytest.raises(DataError, match=r"x\.csv: missing column summary; found fname, dialogue"):
        read_dialogue_csv(path, labelled=True)


@pytest.mark.parametrize("cell", ['""', "", "NaN", "nan"])
def test_empty_or_nan_text_names_rows(tmp_path: Path, cell: str) -> None:
    rows = "".join(f"r_{i},대화 {i},요약 {i},t\n" for i in range(8))
    rows += f"r_8,{cell},요약,t\nr_9,대화,{cell},t\n"
    path = write_csv(tmp_path / "e.csv", HEADER + rows)
    with pytest.raises(DataError) as err:
        read_dialogue_csv(path, labelled=True)
    message = str(err.value)
    assert str(path) in message
    assert "empty or NaN 'dialogue' in row 9" in message
    assert "empty or NaN 'summary' in row 10" in message


def test_many_bad_rows_listed_first_few_plus_count(tmp_path: Path) -> None:
    rows = "".join(f"r_{i},,요약,t\n" for i in range(12))
    path = write_csv(tmp_path / "many.csv", HEADER + rows)
    with pytest.raises(DataError, match=r"rows 1, 2, 3, 4, 5 \(\+7 more\)"):
        read_dialogue_csv(path, labelled=True)


def test_duplicate_fname_names_id_and_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", HEADER + "a,대화,요약,t\nb,대화,요약,t\na,대화2,요약2,t\n")
    with pytest.raises(DataError, match=r"d\.csv: duplicate fname \(a\) in row 3"):
        read_dialogue_csv(path, labelled=True)


def test_non_utf8_file_names_line_and_fix(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cp.csv", HEADER + "a,대화,요약,t\nb,두번째,요약,t\n", encoding="cp949")
    with pytest.raises(DataError, match=r"cp\.csv: not valid UTF-8 \(byte \d+, line 2\).*iconv"):
        read_dialogue_csv(path, labelled=True)


@pytest.mark.parametrize("content", ["", "\n\n", HEADER])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = write_csv(tmp_path / "empty.csv", content)
    with pytest.raises(DataError, match=r"empty\.csv: (the file is empty|header only)"):
        read_dialogue_csv(path, labelled=True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_dialogue_csv(tmp_path / "nope.csv", labelled=False)


def test_skip_policy_drops_and_logs_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "s.csv", HEADER + "a,대화,요약,t\nb,,요약,t\na,대화,요약,t\nc,대화,요약,t\n")
    table = read_dialogue_csv(path, labelled=True, on_bad_rows="skip")
    assert table.fnames == ["a", "c"]
    assert table.skipped == 2
    assert "skipped 2 bad row(s)" in capsys.readouterr().err


def test_unlabelled_split_and_extra_references(tmp_path: Path) -> None:
    test = write_csv(tmp_path / "t.csv", ",fname,dialogue\n0,t_0,대화\n")
    assert read_dialogue_csv(test, labelled=False).fnames == ["t_0"]
    gold = write_csv(tmp_path / "g.csv", "fname,dialogue,summary,summary2,summary1\ng,대화,가,다,나\n")
    assert read_dialogue_csv(gold, labelled=True).references == [["가", "나", "다"]]


@pytest.mark.parametrize("cell", ["\u200b\u200b\u200b", "\u200b \ufeff\u2060", "\u3164", "\u200c\u200d\n\u200b"])
def test_text_of_only_invisible_characters_names_rows(tmp_path: Path, cell: str) -> None:
    rows = "".join(f"r_{i},대화 {i},요약 {i},t\n" for i in range(4))
    rows += f'r_4,"{cell}",요약,t\nr_5,"대화\u200b",요약,t\n'  # a zero-width space inside real text is fine
    path = write_csv(tmp_path / "z.csv", HEADER + rows)
    with pytest.raises(DataError) as err:
        read_dialogue_csv(path, labelled=True)
    message = str(err.value)
    assert str(path) in message
    assert "'dialogue' of only invisible characters (zero-width spaces, ...) in row 5" in message
    assert "row 6" not in message
