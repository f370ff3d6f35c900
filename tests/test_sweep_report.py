"""Sweep reports (dsum.sweep.report): PNG and Markdown from fake run records, offline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from dsum.sweep.report import best_so_far, group_trials, ranked, sweep_metric, write_report

REPO = Path(__file__).resolve().parents[1]
PARAMS = ["learning_rate", "train_batch_size", "lr_scheduler_type", "use_fp16", "generation"]

# (run id, status, best metric, started_at, learning rate, batch, scheduler, fp16) in a shuffled
# directory order, so the report has to sort by start time and metric itself.
TRIALS = [
    ("r3", "completed", 0.41, "2024-05-01T10:30:00+0900", 3e-5, 16, "linear", True),
    ("r1", "completed", 0.35, "2024-05-01T10:00:00+0900", 1e-6, 8, "cosine", False),
    ("r5", "failed", None, "2024-05-01T11:00:00+0900", 1e-4, 64, "cosine", True),
    ("r2", "completed", 0.38, "2024-05-01T10:15:00+0900", 5e-6, 32, "cosine_with_restarts", False),
    ("r6", "pruned", 0.20, "2024-05-01T11:15:00+0900", 2e-6, 8, "linear", False),
    ("r4", "completed", 0.44, "2024-05-01T10:45:00+0900", 5e-5, 16, "cosine", True),
    ("r7", "completed", 0.29, "2024-05-01T11:30:00+0900", 8e-5, 32, "linear", False),
    ("r8", "interrupted", None, "2024-05-01T11:45:00+0900", 1e-5, 64, "cosine", True),
]


def write_run(sweep_dir: Path, run_id: str, status: str, metric: float | None, started: str,
              params: dict[str, Any], sweep_id: str | None = "abc123") -> Path:
    """A run record as RunRecord writes it (only the keys the report reads, plus a few others)."""
    run_dir = sweep_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "stage": "fit",
        "status": status,
        "wandb": {"run_id": run_id, "sweep_id": sweep_id, "project": "dsum", "mode": "offline"},
        "sweep_params": params,
        "monitor": "val/rouge_mean",
        "best_metric": metric,
        "history": [{"stage": "fit", "status": status, "started_at": started}],
        **({"best_model": str(run_dir / "best_model")} if status == "completed" else {}),
    }
    (run_dir / "run.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return run_dir


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    """8 trials of sweep abc123: 5 completed, 1 failed, 1 pruned, 1 interrupted; a dict-valued param."""
    for run_id, status, metric, started, lr, batch, scheduler, fp16 in TRIALS:
        write_run(tmp_path, run_id, status, metric, started, {
            "learning_rate": lr, "train_batch_size": batch, "lr_scheduler_type": scheduler,
            "use_fp16": fp16, "generation": {"num_beams": batch // 8, "length_penalty": 1.0},
        })
    return tmp_path


def table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the Markdown report's table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return split[0], split[2:]


def check_png(path: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 800 and image.height >= 400
        variance = ImageStat.Stat(image.convert("L")).var[0]
    assert variance > 0, f"{path} is a blank image"


def test_report_writes_png_and_top_table(sweep_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing glyph, a bad log axis
        paths = write_report(sweep_dir, top=4)
    assert paths == [sweep_dir / "report.png", sweep_dir / "report.md"]
    check_png(paths[0])

    markdown = paths[1].read_text(encoding="utf-8")
    header, rows = table(markdown)
    assert header[:4] == ["rank", "run_id", "state", "val/rouge_mean"]
    assert header[4:] == PARAMS
    assert [row[:4] for row in rows] == [
        ["1", "r4", "completed", "0.44"], ["2", "r3", "completed", "0.41"],
        ["3", "r2", "completed", "0.38"], ["4", "r1", "completed", "0.35"],
    ]
    assert rows[0][4:8] == ["5e-05", "16", "cosine", "True"]
    assert json.loads(rows[0][8]) == {"num_beams": 2, "length_penalty": 1.0}  # dict params as JSON
    assert "8 trials: 5 completed, 1 failed, 1 interrupted, 1 pruned" in markdown
    assert f"model: `{sweep_dir / 'runs' / 'r4' / 'best_model'}`" in markdown
    assert "(4 more trials not shown.)" in markdown


def test_unfinished_trials_are_listed_unranked_after_completed(sweep_dir: Path) -> None:
    write_report(sweep_dir, top=10)
    _, rows = table((sweep_dir / "report.md").read_text(encoding="utf-8"))
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("1", "r4", "0.44"), ("2", "r3", "0.41"), ("3", "r2", "0.38"), ("4", "r1", "0.35"), ("5", "r7", "0.29"),
        ("-", "r6", "0.2"), ("-", "r5", ""), ("-", "r8", ""),  # partial metric first, then none
    ]


def test_goal_minimize_from_summary_reverses_ranking_and_best_so_far(sweep_dir: Path) -> None:
    (sweep_dir / "abc123_summary.json").write_text(json.dumps({"sweep_id": "abc123", "metric": "val/loss",
                                                               "goal": "minimize"}))
    # A worker-results file matches *_summary.json too, and has no metric: ignored.
    (sweep_dir / "parallel_x_abc123_summary.json").write_text(json.dumps({"workers": []}))
    assert sweep_metric(sweep_dir, "abc123") == ("val/loss", "minimize")
    write_report(sweep_dir, top=3)
    markdown = (sweep_dir / "report.md").read_text(encoding="utf-8")
    header, rows = table(markdown)
    assert header[3] == "val/loss"
    assert [r[1] for r in rows] == ["r7", "r1", "r2"]
    assert "Metric: `val/loss` (minimize)" in markdown
    trials = group_trials(sweep_dir)["abc123"]
    assert [t["run_id"] for t in trials] == ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]  # start order
    # The pruned trial's 0.20 is not a finished result: it never becomes the best.
    assert best_so_far(trials, "minimize") == [0.35, 0.35, 0.35, 0.35, 0.35, 0.35, 0.29, 0.29]
    assert best_so_far(trials, "maximize") == [0.35, 0.38, 0.41, 0.44, 0.44, 0.44, 0.44, 0.44]


def test_start_order_honours_time_zones(tmp_path: Path) -> None:
    write_run(tmp_path, "a", "completed", 0.5, "2024-05-01T10:00:00+0900", {"x": 1})  # 01:00 UTC
    write_run(tmp_path, "b", "completed", 0.6, "2024-05-01T02:00:00+0000", {"x": 2})  # 02:00 UTC
    write_run(tmp_path, "c", "completed", 0.4, "2024-05-01T00:30:00+0000", {"x": 3})  # 00:30 UTC
    assert [t["run_id"] for t in group_trials(tmp_path)["abc123"]] == ["c", "a", "b"]


def test_several_sweeps_get_one_report_each(tmp_path: Path) -> None:
    for i, sweep in enumerate(["s1", "s1", "s2", None]):
        write_run(tmp_path, f"t{i}", "completed", 0.1 * (i + 1), f"2024-05-01T10:0{i}:00+0000",
                  {"optim": ["adamw", "adafactor"][i % 2]}, sweep_id=sweep)
    paths = write_report(tmp_path)
    assert [p.name for p in paths] == ["report_s1.png", "report_s1.md", "report_s2.png", "report_s2.md",
                                       "report_no_sweep_id.png", "report_no_sweep_id.md"]
    _, rows = table((tmp_path / "report_s1.md").read_text(encoding="utf-8"))
    assert [r[1] for r in rows] == ["t1", "t0"]
    for png in paths[::2]:
        check_png(png)

    # Naming a sweep reports only it (with trials that recorded no sweep id, as `summarize` counts them).
    assert write_report(tmp_path, sweep_id="s2") == [tmp_path / "report_s2.png", tmp_path / "report_s2.md"]
    _, rows = table((tmp_path / "report_s2.md").read_text(encoding="utf-8"))
    assert [r[1] for r in rows] == ["t3", "t2"]
    with pytest.raises(ValueError, match=r"no trials of sweep 'zzz'.*s1, s2"):
        write_report(tmp_path, sweep_id="zzz")


def test_no_trials_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path}: no trial records")):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        write_report(tmp_path / "missing")


def test_all_failed_and_odd_params_still_report(tmp_path: Path) -> None:
    # Korean text, a list, a bool, a param only some trials have, a NaN metric: no glyph warnings,
    # no crash, the NaN trial is unranked.
    write_run(tmp_path, "f1", "failed", None, "2024-05-01T10:00:00+0000",
              {"prefix": "요약: ", "layers": [1, 2], "flag": True})
    write_run(tmp_path, "f2", "failed", float("nan"), "2024-05-01T10:01:00+0000", {"prefix": "a|b", "flag": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png, md = write_report(tmp_path)
    check_png(png)
    markdown = md.read_text(encoding="utf-8")
    assert "Best run: none" in markdown and "2 trials: 2 failed" in markdown
    assert "요약:" in markdown and "a\\|b" in markdown  # Markdown keeps the text, escapes the pipe
    header, rows = table(markdown)
    assert header[4:] == ["prefix", "layers", "flag"]
    assert [r[0] for r in rows] == ["-", "-"]
    assert rows[0][5] == "[1,2]" and rows[1][5] == ""
    assert (rows[0][3], rows[1][3]) == ("", "nan")
    assert [rank for rank, _ in ranked(group_trials(tmp_path)["abc123"], "maximize")] == [None, None]


def test_cli_prints_paths(sweep_dir: Path) -> None:
    import dsum.sweep.__main__  # noqa: F401  (an import error fails the test; it never skips it)

    result = subprocess.run([sys.executable, "-m", "dsum.sweep", "report", str(sweep_dir), "--top", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(sweep_dir / "report.png"), str(sweep_dir / "report.md")]
    assert len(table((sweep_dir / "report.md").read_text(encoding="utf-8"))[1]) == 3


def test_failed_trials_stay_in_view(tmp_path: Path) -> None:
    # The failed trial has the widest learning rate; its cross must be inside the (log) x range.
    from dsum.sweep.report import plot_report

    write_run(tmp_path, "a", "completed", 0.30, "2024-05-01T10:00:00+0000", {"learning_rate": 1e-6})
    write_run(tmp_path, "b", "completed", 0.40, "2024-05-01T10:01:00+0000", {"learning_rate": 2e-6})
    write_run(tmp_path, "c", "failed", None, "2024-05-01T10:02:00+0000", {"learning_rate": 1e-3})
    figure = plot_report(group_trials(tmp_path)["abc123"], "val/rouge_mean", "maximize", "abc123")
    panel = figure.axes[1]
    assert panel.get_xscale() == "log" and panel.get_title() == "learning_rate (log)"
    low, high = panel.get_xlim()
    assert low < 1e-6 and high > 1e-3
    assert panel.get_ylim()[0] < 0.30 - 0.005  # room below the lowest metric for the crosses
