"""Every shipped sweep YAML runs one real trial through the local engine (tiny models, sample data).

Each YAML is copied into tmp_path with native overrides after ``${args}`` that make the trial tiny; a swept
parameter that would collide with an override (``split_argv`` refuses one key set twice) is pinned instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dsum.sweep.local import run_local
from tests.conftest import REPO, SAMPLE
from tests.test_sweep_local import records

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
# Base config of the command (or model_preset) -> tiny model family.
FAMILIES = {"configs/kobart.yaml": "bart", "configs/quickstart.yaml": "bart", "configs/quickstart-t5.yaml": "t5",
            "configs/pko-t5.yaml": "t5", "configs/mt5.yaml": "t5", "configs/kogpt2.yaml": "gpt2",
            "configs/quickstart-gpt2.yaml": "gpt2", "configs/quickstart-llm.yaml": "llm"}
# Swept parameters pinned to one value: they set the same key as an override (epochs) or would be slow/unsafe
# on a tiny CPU model (long inputs beyond a tiny model's positions, fp16/bf16 precision is not allowed on CPU).
PINNED = {"num_train_epochs": 1, "trainer.max_epochs": 1, "encoder_max_len": 64, "decoder_max_len": 32,
          "generation_max_length": 16, "gradient_accumulation_steps": 1, "fp16": False, "bf16": False,
          "trainer.precision": "32-true"}


def tiny_sweep(source: Path, tmp_path: Path, tiny: dict[str, Path]) -> Path:
    """Write a one-trial, tiny-model copy of ``source`` into tmp_path and return its path."""
    sweep: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    command: list[str] = sweep["command"]
    params: dict[str, Any] = sweep["parameters"]
    if "model_preset" in params:  # one preset whose family has a tiny model; its config holds no hub override
        params["model_preset"] = {"value": "kobart"}
        config = "configs/kobart.yaml"
    else:
        config = command[command.index("--config") + 1]
    family = FAMILIES.get(config)
    assert family is not None, f"{source.name}: no tiny model family known for base config {config!r}"
    model = tiny[family]
    for i, arg in enumerate(command):
        if arg.startswith("configs/"):
            command[i] = str(REPO / arg)
        elif arg.startswith("--model.pretrained="):  # generation_params: models/registry/<key>/best
            command[i] = f"--model.pretrained={model}"
    sweep["program"] = str(REPO / sweep["program"])
    for name, value in PINNED.items():
        if name in params:
            params[name] = {"value": value}
    overrides = [f"--data.train_file={SAMPLE / 'train.csv'}", f"--data.val_file={SAMPLE / 'dev.csv'}",
                 f"--data.test_file={SAMPLE / 'dev.csv'}", f"--data.predict_file={SAMPLE / 'test.csv'}",
                 f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.limit_train_batches=2",
                 "--data.val_subset=4", "--model.generation.max_new_tokens=4", "--trainer.logger=false",
                 "--trainer.accelerator=cpu"]
    if not any(a.startswith("--model.pretrained=") for a in command):
        overrides.append(f"--model.pretrained={model}")
    if "num_train_epochs" not in params and "trainer.max_epochs" not in params:
        overrides.append("--trainer.max_epochs=1")
    at = command.index("${args}") + 1
    command[at:at] = overrides
    sweep["run_cap"] = 1
    sweep.pop("early_terminate", None)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("source", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweep_runs_one_tiny_trial(source: Path, tiny_models, tiny_llm_random, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("DSUM_SWEEP_IN_PROCESS", "0")
    name = yaml.safe_load(source.read_text(encoding="utf-8"))["name"]
    monkeypatch.setenv("DSUM_SWEEP_DIR", str(tmp_path / "outputs" / f"sweep_{name}"))
    path = tiny_sweep(source, tmp_path, {**tiny_models, "llm": tiny_llm_random})

    summary = run_local(path, count=1)

    trials = records(tmp_path, name)
    assert [r["status"] for r in trials] == ["completed"], summary
    assert trials[0]["best_metric"] is not None
