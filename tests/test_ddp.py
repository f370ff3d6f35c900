"""DDP on CPU: 2 processes (gloo) through main.py, offline W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, SAMPLE

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def main_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def common(tiny: Path, run_dir: Path, devices: int) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "quickstart.yaml"),
        f"--model.pretrained={tiny}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.predict_file={SAMPLE / 'test.csv'}",
        f"--data.cache_dir={run_dir.parent / 'cache'}",
        # 13 examples in batches of 5, 5, 3: the second rank repeats the first (longest) batch.
        "--data.val_subset=13",
        "--data.eval_batch_size=5",
        "--model.generation.max_new_tokens=8",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        *(["--trainer.strategy=ddp"] if devices > 1 else []),
    ]


def test_ddp_fit_validate_predict(tiny_models, tmp_path) -> None:
    run_dir = tmp_path / "ddp"
    main_py("fit", *common(tiny_models["bart"], run_dir, 2), "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3", cwd=REPO)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # exactly one W&B run for two ranks
    assert [p.name for p in run_dir.glob("best_model")] == ["best_model"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    assert record["wandb"]["run_id"] in runs[0].name

    export = run_dir / "best_model"
    scores = {}
    for devices in (1, 2):
        val_dir = tmp_path / f"validate{devices}"
        main_py("validate", *common(export, val_dir, devices), "--trainer.logger=false", cwd=REPO)
        scores[devices] = json.loads((val_dir / "validate.json").read_text())["final_metrics"]
    for key in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_mean"):
        assert scores[2][key] == pytest.approx(scores[1][key], abs=1e-9), key
    # Loss and length too count the example that the second rank repeats only once.
    for key in ("val/loss", "val/gen_len"):
        assert scores[2][key] == pytest.approx(scores[1][key], rel=1e-5), key

    submission = tmp_path / "submission.csv"
    main_py("predict", *common(export, tmp_path / "predict", 2), f"--submission.path={submission}",
            "--trainer.logger=false", cwd=REPO)
    fnames = pd.read_csv(submission)["fname"].tolist()
    assert fnames == pd.read_csv(SAMPLE / "test.csv")["fname"].tolist()  # each once, in order
