"""`python -m dsum.eval.ensemble`: MBR choice, submission layout, win report, scores with gold, errors, and (slow) an
ensemble of three differently seeded tiny models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from dsum.eval.ensemble import main, mbr_choose
from dsum.eval.metrics import RougeCalculator, rouge_scores
from tests.conftest import SAMPLE, command_fails, help_text


def write_source(path: Path, fnames: list[str], summaries: list[str], layout: str = "plain") -> Path:
    frame = pd.DataFrame({"fname": fnames, "summary": summaries})
    frame.to_csv(path, index=layout == "sample")
    return path


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()  # drop what came before (training logs)
    main(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # one JSON report
    return json.loads(out[0])


def test_mbr_picks_the_candidate_the_others_agree_with() -> None:
    candidates = [
        "#Person1#은 공항에 갑니다.",                      # close to the majority
        "#Person1#은 내일 공항에 갑니다.",                  # the medoid: shares most with every other
        "#Person1#은 내일 아침 공항에 갑니다.",
        "두 사람은 저녁 메뉴를 고릅니다.",                   # an outlier
    ]
    best, support = mbr_choose(candidates, RougeCalculator("whitespace"))
    assert best == 1
    assert support.argmin() == 3 and support[3] == 0.0
    # Identical candidates tie; the first listed wins.
    assert mbr_choose(["가 나", "가 나", "다 라"], RougeCalculator("whitespace"))[0] == 0


@pytest.fixture()
def dev() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "dev.csv", dtype=str, keep_default_na=False)


def noisy_sources(dev: pd.DataFrame, tmp_path: Path, count: int = 3) -> list[Path]:
    """Sources that each replace a different third of the summaries with another dialogue's summary."""
    fnames, gold = dev["fname"].tolist(), dev["summary"].tolist()
    paths = []
    for k in range(count):
        rng = random.Random(k)
        summaries = [gold[(i + 1 + rng.randrange(len(gold) - 1)) % len(gold)] if i % count == k else s
                     for i, s in enumerate(gold)]
        paths.append(write_source(tmp_path / f"member{k}.csv", fnames, summaries, "sample" if k == 0 else "plain"))
    return paths


def test_ensemble_of_disagreeing_members_beats_each_of_them(dev: pd.DataFrame, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sources = noisy_sources(dev, tmp_path)
    gold = SAMPLE / "dev.csv"
    out = tmp_path / "ensemble.csv"
    report_path = tmp_path / "report.json"
    report = run_main(capsys, *map(str, sources), "--out", str(out), "--gold", str(gold),
                      "--report", str(report_path))

    # The sample layout, every fname once, in the first source's order.
    assert out.read_text(encoding="utf-8").startswith(",fname,summary\n0,")
    written = pd.read_csv(out, index_col=0, dtype=str, keep_default_na=False)
    assert written.index.tolist() == [str(i) for i in range(len(dev))]
    assert written["fname"].tolist() == dev["fname"].tolist()
    # Each member is wrong on its own third; the two others agree on the gold summary there.
    assert written["summary"].tolist() == dev["summary"].tolist()

    assert json.loads(report_path.read_text()) == report
    assert report["count"] == len(dev)
    assert report["metric"] == {"name": "rouge", "tokenizer": "mecab", "references": "mean", "scale": 100}
    assert [s["name"] for s in report["sources"]] == [str(p) for p in sources]
    assert sum(s["wins"] for s in report["sources"]) == len(dev)
    # Agreeing candidates tie and the first listed wins: member 0 except on its own wrong third.
    wrong0 = len(range(0, len(dev), 3))
    assert [s["wins"] for s in report["sources"]] == [len(dev) - wrong0, wrong0, 0]
    members = [s["score"]["rouge_mean"] for s in report["sources"]]
    expected = rouge_scores(pd.read_csv(sources[1])["summary"].tolist(), dev["summary"].tolist())["rouge_mean"]
    assert members[1] == pytest.approx(expected)
    assert report["ensemble"]["score"]["rouge_mean"] == pytest.approx(100.0)
    assert report["ensemble"]["score"]["rouge_mean"] > max(members)
    assert report["ensemble"]["members_mean_rouge_mean"] == pytest.approx(sum(members) / len(members))


def test_data_sets_the_row_order(dev: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = noisy_sources(dev, tmp_path)
    data = tmp_path / "dialogues.csv"
    dev.iloc[::-1][["fname", "dialogue"]].to_csv(data, index=False)
    out = tmp_path / "ensemble.csv"
    run_main(capsys, *map(str, sources), "--out", str(out), "--data", str(data), "--tokenizer", "whitespace")
    assert pd.read_csv(out)["fname"].tolist() == dev["fname"].tolist()[::-1]


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return command_fails(main, capsys, *args)


def test_bad_sources_are_named(dev: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = noisy_sources(dev, tmp_path)
    out = str(tmp_path / "out.csv")
    assert "at least 3 sources (got 2)" in _fails(capsys, *map(str, sources[:2]), "--out", out)

    short = write_source(tmp_path / "short.csv", dev["fname"].tolist()[:-1], dev["summary"].tolist()[:-1])
    message = _fails(capsys, *map(str, sources[:2]), str(short), "--out", out)
    assert f"{short}: fnames differ from {sources[0]}" in message and dev["fname"].iloc[-1] in message

    absent = tmp_path / "absent"
    assert f"{absent}: neither a submission CSV nor an exported model directory" in _fails(
        capsys, *map(str, sources[:2]), str(absent), "--out", out)

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert f"{model_dir}: a model directory needs --data" in _fails(
        capsys, *map(str, sources[:2]), str(model_dir), "--out", out)
    assert not Path(out).exists()


def test_bad_data_files_are_one_line_errors_naming_the_file(
    dev: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = [str(p) for p in noisy_sources(dev, tmp_path)]
    out = tmp_path / "out.csv"

    def fails(data: Path) -> str:
        message = _fails(capsys, *sources, "--out", str(out), "--data", str(data))
        assert str(data) in message and "\n" not in message and "Traceback" not in message
        return message

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert "the file is empty" in fails(empty)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("fname,dialogue\ndev_0,café au lait\n".encode("latin-1"))
    assert "not valid UTF-8" in fails(latin1)
    duplicated = tmp_path / "duplicated.csv"
    pd.concat([dev, dev.iloc[[2]]])[["fname", "dialogue"]].to_csv(duplicated, index=False)
    message = fails(duplicated)
    assert f"duplicate fname ({dev['fname'].iloc[2]}) in row {len(dev) + 1}" in message
    assert "fnames differ" not in message and "on_bad_rows" not in message
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.ci
def test_ensemble_of_three_seeded_tiny_models_scores_at_least_their_mean(
    tiny_llm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The pre-trained tiny chat LLM with LoRA (configs/quickstart-llm.yaml, 5 of its 8 epochs): its summaries follow
    # the dialogue. The quickstart's tiny BART gives one summary for every dialogue, which says nothing about MBR.
    from dsum.cli import DsumCLI
    from tests.test_llm_lora import llm_args

    exports = []
    for seed in (1, 2, 3):
        run_dir = tmp_path / f"seed{seed}"
        DsumCLI(args=["fit", *llm_args(tiny_llm, run_dir, f"--seed_everything={seed}", "--trainer.max_epochs=5",
                                       "--trainer.logger=false", "--data.eval_batch_size=32")])
        exports.append(run_dir / "best_model")
    out = tmp_path / "ensemble.csv"
    dev = SAMPLE / "dev.csv"
    report = run_main(capsys, *map(str, exports), "--out", str(out), "--data", str(dev), "--gold", str(dev))
    members = [s["score"]["rouge_mean"] for s in report["sources"]]
    assert len(set(members)) == 3, members  # the seeds gave different models
    assert report["ensemble"]["score"]["rouge_mean"] >= sum(members) / 3, (report["ensemble"], members)
    submission = pd.read_csv(out)
    assert submission["fname"].tolist() == pd.read_csv(dev)["fname"].tolist()
    # Summaries follow the dialogue (at least a third distinct), so MBR chose between real candidates.
    assert submission["summary"].nunique() >= len(submission) / 3, submission["summary"].head().tolist()


def test_help_lists_every_option_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(main, capsys)
    for option, what in {
        "sources": "Submission CSVs (fname,summary) and/or exported model directories (at least 3 in all).",
        "--out OUT": "Ensemble submission CSV to write.",
        "--gold GOLD": "Labelled CSV: print each source's score and the ensemble's.",
        "--data DATA": "Dialogues CSV (fname,dialogue) for model directories; also sets the output's row order.",
        "--config CONFIG": "Config for predicting with model directories (default: the run's config.yaml).",
        "--tokenizer {mecab,kiwi,whitespace}": "ROUGE tokenizer for agreement and scores. (default: mecab)",
        "--references {mean,max}": "Rule over several gold references per row. (default: mean)",
        "--report REPORT": "Also write the JSON report here.",
    }.items():
        assert f"{option} {what}" in text, option


def test_an_unknown_option_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["a.csv", "b.csv", "c.csv", "--out", str(tmp_path / "out.csv"), "--bogus"])
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if "error" in line] == [
        "error: unrecognized arguments: --bogus"]
    assert not (tmp_path / "out.csv").exists()
