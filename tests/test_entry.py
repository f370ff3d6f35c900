"""The ``dsum`` command covers training and every tool; ``python main.py`` still works."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dsum.entry import TOOLS, TRAINING, main
from tests.conftest import REPO


def test_the_console_script_lists_every_command() -> None:
    script = shutil.which("dsum", path=str(REPO / ".venv" / "bin")) or shutil.which("dsum")
    assert script, "the dsum console script is not installed (pip install -e .)"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for command in (*TRAINING, *TOOLS):
        assert f"\n  {command} " in out, command


@pytest.mark.parametrize("command, expect", [
    ("fit", "--trainer.max_epochs"), ("validate", "--ckpt_path"), ("test", "--ckpt_path"),
    ("predict", "--submission.path"), ("sweep", "{create,agent,parallel,serial,summarize,local,report,registry}"),
    ("score", "--pred"), ("ensemble", "--out"), ("tiny", "--csv"),
])
def test_every_command_documents_its_options(command, expect, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dsum"])
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code in (0, None)
    assert expect in capsys.readouterr().out


def test_an_unknown_command_names_it_and_lists_the_others(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["trian"])
    assert str(done.value.code).startswith("dsum: unknown command 'trian'") and "predict" in str(done.value.code)
