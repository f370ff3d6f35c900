"""The exact argv a `wandb agent` runs, built with wandb's own helpers, runs main.py as intended."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import random
import pytest
import yaml
from transformers import AutoModelForSeq2SeqLM
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from dsum.infra.files import atomic_write_dir
from dsum.registry import EvaluationKey, current_best, promote_if_better, versions
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


KEY = EvaluationKey("val/rouge_mean", "maximize", {"name": "rouge"}, "d" * 64)


def _export(model_dir: Path, target: Path, tag: str) -> Path:
    def fill(staging: Path) -> None:
        AutoModelForSeq2SeqLM.from_pretrained(model_dir).save_pretrained(staging)
        (staging / "tag.txt").write_text(tag)

    return atomic_write_dir(target, fill)


def _promote_after_barrier(barrier, candidate: str, value: float, root: str, queue) -> None:
    """One worker: wait for the other, then promote with a pause inside the critical section (between reading
    the incumbent and writing the new version), so two unserialised promotions always overlap."""
    from dsum import registry

    read_incumbent = registry.current_best

    def slow_current_best(key_dir):
        incumbent = read_incumbent(key_dir)
        time.sleep(1.0)
        return incumbent

    registry.current_best = slow_current_best
    barrier.wait()
    result = registry.promote_if_better(candidate, value, KEY, root, {"run_id": Path(candidate).parent.name})
    queue.put((Path(candidate).parent.name, result.promoted, result.version))


def test_concurrent_promotions_are_serialised(tiny_models, tmp_path) -> None:
    root = tmp_path / "models" / "registry"
    candidates = {f"run{i}": (_export(tiny_models["bart"], tmp_path / f"run{i}" / "best_model", f"run{i}"), value)
                  for i, value in enumerate([31.0, 42.5])}
    # spawn, not fork: a forked child of a process that has run torch can deadlock on a lock held by another thread.
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_promote_after_barrier, args=(barrier, str(c), v, str(root), queue))
               for c, v in candidates.values()]
    for worker in workers:
        worker.start()
    results = sorted(queue.get(timeout=300) for _ in workers)  # generous: CI machines may be loaded
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    key_dir = root / KEY.slug()
    promoted = [(run, version) for run, ok, version in results if ok]
    # Whatever the order: the better model is promoted, every promotion got its own version, and best is the max.
    assert ("run1", True) in [(run, ok) for run, ok, _ in results]
    assert sorted(v for _, v in promoted) == versions(key_dir) == list(range(1, len(promoted) + 1))
    for run, version in promoted:
        assert (key_dir / f"v{version}" / "tag.txt").read_text() == run
    assert current_best(key_dir)["metric"]["value"] == 42.5
    assert (key_dir / "best" / "tag.txt").read_text() == "run1"
    assert AutoModelForSeq2SeqLM.from_pretrained(key_dir / "best") is not None
    assert not [p for p in key_dir.iterdir() if ".staging." in p.name]
    # A worse model never replaces it.
    assert promote_if_better(candidates["run0"][0], 37.0, KEY, root).promoted is False
    assert (key_dir / "best" / "tag.txt").read_text() == "run1"
