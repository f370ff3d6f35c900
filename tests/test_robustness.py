"""Interruption and resume, secrets kept out of every file a run writes, shell metacharacters as data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE

SECRET = "sk-fake-SECRET-9f8e7d6c5b4a"


def main_cmd(tiny: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "main.py"), "fit",
        "--config", str(REPO / "configs" / "quickstart.yaml"),
        f"--model.pretrained={tiny}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.cache_dir={run_dir.parent / 'cache'}",
        "--data.val_subset=4",
        "--model.generation.max_new_tokens=4",
        *extra,
    ]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **extra}


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted(tiny_models, tmp_path) -> None:
    steps = ["--trainer.max_epochs=2", "--trainer.logger=false"]
    reference = tmp_path / "reference"
    subprocess.run(main_cmd(tiny_models["bart"], reference, *steps), env=env(), check=True,
                   capture_output=True, timeout=600)
    expected_steps = json.loads((reference / "run.json").read_text())["global_step"]
    assert expected_steps == 2 * 19  # 300 rows in batches of 16, two epochs

    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen(main_cmd(tiny_models["bart"], run_dir, *steps), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    record = run_dir / "run.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the first training step
        if record.is_file() and "startup_seconds" in json.loads(record.read_text())["history"][-1]:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-3000:]
    interrupted = json.loads(record.read_text())
    assert interrupted["status"] == "interrupted", output[-3000:]
    assert interrupted["history"][-1]["signal"] == "SIGTERM"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert 0 < interrupted["global_step"] if "global_step" in interrupted else True

    subprocess.run(main_cmd(tiny_models["bart"], run_dir, *steps, "--ckpt_path=last"), env=env(), check=True,
                   capture_output=True, timeout=600)
    final = json.loads(record.read_text())
    assert final["global_step"] == expected_steps
    assert [h["status"] for h in final["history"]] == ["interrupted", "completed"]
    assert final["run_id"] == interrupted["run_id"]


@pytest.mark.slow
def test_secret_in_env_and_override_lands_in_no_file(tiny_models, tmp_path) -> None:
    run_dir = tmp_path / "secret"
    cmd = main_cmd(tiny_models["bart"], run_dir, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                   f"--model.remove_tokens=[{SECRET}]")
    proc = subprocess.run(cmd, env=env(WANDB_API_KEY=SECRET, HF_TOKEN=SECRET), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".wandb" for p in files)
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    assert SECRET not in proc.stdout + proc.stderr
    assert "<redacted>" in (run_dir / "config.yaml").read_text()  # the override is there, masked
