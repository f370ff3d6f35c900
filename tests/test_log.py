"""`dsum.infra.log`: library messages as plain lines on stderr, on global rank 0 only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from lightning_utilities.core.rank_zero import rank_zero_only

from dsum.infra.log import every_rank, global_rank, note, warn
from dsum.sweep.workers import run_workers

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK")


@pytest.fixture()
def no_rank(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process no launcher and no Trainer has given a rank."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delattr(rank_zero_only, "rank", raising=False)
    return monkeypatch


def test_a_message_on_rank_zero_is_one_plain_line_on_stderr(no_rank, capsys) -> None:
    note("dsum: worker 0 started (pid 1, gpu none), log w0.log")
    warn("warning: dev.csv: 2 empty prediction(s), scored 0.")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("dsum: worker 0 started (pid 1, gpu none), log w0.log\n"
                            "warning: dev.csv: 2 empty prediction(s), scored 0.\n")


@pytest.mark.parametrize("variables", [{"RANK": "1"}, {"LOCAL_RANK": "1"}, {"SLURM_PROCID": "3"},
                                       {"LOCAL_RANK": "0", "NODE_RANK": "1"}])
def test_nothing_on_another_rank_from_the_launchers_variables(no_rank, capsys, variables) -> None:
    for name, value in variables.items():
        no_rank.setenv(name, value)
    assert global_rank() != 0
    note("dsum: a note")
    warn("warning: a warning")
    assert capsys.readouterr().err == ""


def test_lightnings_rank_decides_when_a_trainer_set_it(no_rank, capsys) -> None:
    no_rank.setenv("LOCAL_RANK", "1")  # a Trainer's global rank wins over the launcher's variables
    no_rank.setattr(rank_zero_only, "rank", 0, raising=False)
    note("dsum: from rank 0")
    no_rank.setattr(rank_zero_only, "rank", 1, raising=False)
    note("dsum: from rank 1")
    assert capsys.readouterr().err == "dsum: from rank 0\n"


def test_an_applications_logging_setup_neither_doubles_nor_silences_a_message() -> None:
    script = ("import logging, logging.config\n"
              "from dsum.infra.log import note, warn\n"
              "logging.basicConfig()\n"  # a console handler on the root logger
              "warn('warning: once')\n"
              "logging.config.dictConfig({'version': 1})\n"  # disable_existing_loggers=True by default
              "note('dsum: still here')\n")
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "warning: once\ndsum: still here\n" and done.stdout == ""


def test_a_tool_process_reports_on_every_rank(no_rank, capsys) -> None:
    no_rank.setenv("SLURM_PROCID", "1")  # `srun -N2 dsum sweep local ...` on the second node
    note("dsum: hidden on a training rank")
    every_rank()
    note("dsum: a tool says it on every node")
    assert capsys.readouterr().err == "dsum: a tool says it on every node\n"


def test_the_parallel_launchers_progress_is_a_note_not_output(no_rank, tmp_path, capsys) -> None:
    """``dsum sweep parallel``'s stdout is its table of workers; progress goes to stderr (before: stdout)."""
    [result] = run_workers([[sys.executable, "-c", "pass"]], tmp_path)
    assert result.status == "completed"
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [line.split(" (")[0] for line in captured.err.splitlines()] == [
        "dsum: worker 0 started", "dsum: worker 0 completed"]
