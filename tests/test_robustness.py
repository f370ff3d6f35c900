"""Interruption and resume, secrets kept out of every file a run writes, shell metacharacters as data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch

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


class BatchIndexLog(L.Callback):
    """Appends every training batch's example indices to a JSON-lines file (a run and its resumption share one).

    Args:
        path: The file to append to.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(batch["index"].tolist()) + "\n")


def log_batches_to(path: Path) -> str:
    """The command-line override that makes a run log its batches to ``path``."""
    callback = {"class_path": "tests.test_robustness.BatchIndexLog", "init_args": {"path": str(path)}}
    return f"--trainer.callbacks+={json.dumps(callback)}"


def read_batches(path: Path) -> list[list[int]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of the run's last.ckpt, written at the end of its last epoch."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted(tiny_models, tmp_path) -> None:
    epoch_steps = 8
    steps = ["--trainer.max_epochs=2", f"--trainer.limit_train_batches={epoch_steps}", "--trainer.logger=false"]
    reference = tmp_path / "reference"
    log_override = log_batches_to(tmp_path / "reference.jsonl")
    subprocess.run(main_cmd(tiny_models["bart"], reference, *steps, log_override), env=env(), check=True,
                   capture_output=True, timeout=900)
    expected = read_batches(tmp_path / "reference.jsonl")
    assert len(expected) == 2 * epoch_steps

    run_dir = tmp_path / "interrupted"
    log_path = tmp_path / "interrupted.jsonl"
    log_override = log_batches_to(log_path)
    proc = subprocess.Popen(main_cmd(tiny_models["bart"], run_dir, *steps, log_override), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(read_batches(log_path)) < 3:  # into the first epoch
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-3000:]
    interrupted = json.loads((run_dir / "run.json").read_text())
    assert interrupted["status"] == "interrupted", output[-3000:]
    assert interrupted["history"][-1]["signal"] == "SIGTERM"
    seen = len(read_batches(log_path))
    assert 3 <= seen < epoch_steps, "the signal must land mid-epoch for this test to say anything"

    subprocess.run(main_cmd(tiny_models["bart"], run_dir, *steps, log_override, "--ckpt_path=last"), env=env(),
                   check=True, capture_output=True, timeout=900)
    final = json.loads((run_dir / "run.json").read_text())
    assert [h["status"] for h in final["history"]] == ["interrupted", "completed"]
    assert final["run_id"] == interrupted["run_id"]
    # Resumed where it stopped (a fresh run would start at 0 and log its batches again) ...
    assert final["history"][-1]["resumed_from"]["global_step"] == seen
    # ... and trained on exactly the batches the uninterrupted run did, in order, to the same weights and metrics.
    assert read_batches(log_path) == expected
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    reference_record = json.loads((reference / "run.json").read_text())
    assert final["global_step"] == reference_record["global_step"] == 2 * epoch_steps
    assert len(final["metrics_history"]) == len(reference_record["metrics_history"]) == 2
    for mine, theirs_ in zip(final["metrics_history"], reference_record["metrics_history"]):
        assert mine == pytest.approx(theirs_, rel=1e-5, abs=1e-6)


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
