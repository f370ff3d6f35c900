"""The exact argv a `wandb agent` runs, built with wandb's own helpers, runs main.py as intended."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import random
import pytest
import yaml
from transformers import AutoModelForSeq2SeqLM
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from dsum.files import atomic_write_dir
from dsum.sweep.registry import current_best, promote_if_better
from dsum.sweep.spec import load_sweep, sample_params
from tests.conftest import REPO, SAMPLE

INJECTION = "'; touch {marker}; echo \"$(touch {marker})\" #"


def agent_command(sweep: dict, params: dict, extra: list[str]) -> list[str]:
    """What wandb_agent.Agent._command_run builds (wandb 0.31), for a program run by path."""
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(interpreter=[sys.executable], program=[str(REPO / sweep["program"])], env=["/usr/bin/env"])
    command: list[str] = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command += sweep_vars.get(chunk[2:-1]) or []
            if chunk == "${args}":
                command += extra
        else:
            command.append(chunk)
    return command


def test_quick_sweep_trial_runs_with_the_swept_values(tiny_models, tmp_path) -> None:
    sweep = load_sweep(REPO / "sweeps" / "quick.yaml")
    params = sample_params(sweep, random.Random(3))
    marker = tmp_path / "pwned"
    params["data.source_prefix"] = INJECTION.format(marker=marker)
    command = agent_command(sweep, params, [
        f"--model.pretrained={tiny_models['bart']}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--trainer.limit_train_batches=2", "--data.val_subset=4", "--model.generation.max_new_tokens=4",
    ])
    param_file = tmp_path / "config-run1.yaml"
    param_file.write_text(yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "sweep42", "WANDB_RUN_ID": "run1",
           "WANDB_SWEEP_PARAM_PATH": str(param_file), "DSUM_SWEEP_DIR": str(tmp_path / "sweep_quick")}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()  # the value was data, never shell

    run_dir = tmp_path / "sweep_quick" / "runs" / "run1"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["learning_rate"] == pytest.approx(params["learning_rate"])
    assert config["model"]["init_args"]["generation"]["num_beams"] == params["num_beams"]
    assert config["trainer"]["max_epochs"] == params["num_train_epochs"]
    assert config["data"]["batch_size"] == params["train_batch_size"]
    assert config["data"]["source_prefix"] == INJECTION.format(marker=marker)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["wandb"]["sweep_id"] == "sweep42" and record["run_id"] == "run1"
    assert record["sweep_params"]["learning_rate"] == pytest.approx(params["learning_rate"])
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def _export(model_dir: Path, target: Path, tag: str) -> Path:
    def fill(staging: Path) -> None:
        AutoModelForSeq2SeqLM.from_pretrained(model_dir).save_pretrained(staging)
        (staging / "tag.txt").write_text(tag)

    return atomic_write_dir(target, fill)


def _promote(args: tuple[str, float, str]) -> bool:
    candidate, value, registry = args
    return promote_if_better(candidate, value, registry=registry, source={"run_id": Path(candidate).parent.name})


def test_concurrent_promotions_keep_the_better_model(tiny_models, tmp_path) -> None:
    registry = tmp_path / "models" / "best_model"
    candidates = [(_export(tiny_models["bart"], tmp_path / f"run{i}" / "best_model", f"run{i}"), value)
                  for i, value in enumerate([31.0, 42.5, 37.0, 12.0])]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_promote, [(str(c), v, str(registry)) for c, v in candidates])
    assert results[1] is True  # the best always wins, whatever the order
    assert current_best(registry)["value"] == 42.5
    assert (registry / "tag.txt").read_text() == "run1"
    assert AutoModelForSeq2SeqLM.from_pretrained(registry) is not None
    assert not [p for p in registry.parent.iterdir() if p.name.startswith(".best_model.") and p.is_dir()]
    # A worse model never replaces it.
    assert promote_if_better(candidates[2][0], 37.0, registry=registry) is False
    assert (registry / "tag.txt").read_text() == "run1"
