"""DDP on CPU: 2 processes (gloo) through main.py, offline W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, SAMPLE, main_py

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


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
    fit = main_py("fit", *common(tiny_models["bart"], run_dir, 2), "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=3", "--data.batch_size=4", "--trainer.accumulate_grad_batches=3")
    said = [line for line in (fit.stdout + fit.stderr).splitlines() if "effective batch size" in line]
    assert said == ["dsum: 2 devices: effective batch size 24 = data.batch_size 4 x trainer.accumulate_grad_batches 3 "
                    "x 2 devices (model.learning_rate is not scaled)"]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # exactly one W&B run for two ranks
    assert [p.name for p in run_dir.glob("best_model")] == ["best_model"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    assert record["effective_batch_size"] == 24
    assert record["wandb"]["run_id"] in runs[0].name

    export = run_dir / "best_model"
    scores = {}
    for devices in (1, 2):
        val_dir = tmp_path / f"validate{devices}"
        main_py("validate", *common(export, val_dir, devices), "--trainer.logger=false")
        scores[devices] = json.loads((val_dir / "validate.json").read_text())["final_metrics"]
    for key in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_mean"):
        assert scores[2][key] == pytest.approx(scores[1][key], abs=1e-9), key
    # Loss and length too count the example that the second rank repeats only once.
    for key in ("val/loss", "val/gen_len"):
        assert scores[2][key] == pytest.approx(scores[1][key], rel=1e-5), key

    submission = tmp_path / "submission.csv"
    main_py("predict", *common(export, tmp_path / "predict", 2), f"--submission.path={submission}",
            "--trainer.logger=false")
    fnames = pd.read_csv(submission)["fname"].tolist()
    assert fnames == pd.read_csv(SAMPLE / "test.csv")["fname"].tolist()  # each once, in order


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(*args: str) -> None:
    """``main.py`` launched once per "node" on localhost, as on a cluster without a scheduler (MASTER_ADDR,
    MASTER_PORT, NODE_RANK, WORLD_SIZE), with ``--trainer.num_nodes=2``; both must succeed."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    nodes = [subprocess.Popen([sys.executable, str(REPO / "main.py"), *args, "--trainer.num_nodes=2",
                               "--trainer.strategy=ddp"], cwd=REPO, env={**env, "NODE_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-4000:]


def test_two_nodes_on_localhost_equal_one_process(tiny_models, tmp_path) -> None:
    """Two nodes: one run record, one export, one W&B run, and the validation metrics of one process."""
    run_dir = tmp_path / "nodes"
    two_nodes("fit", *common(tiny_models["bart"], run_dir, 1), "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert (run_dir / "best_model").is_dir() and len(list(run_dir.glob("best_model*"))) == 1

    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    main_py("validate", *common(run_dir / "best_model", one_dir, 1), "--trainer.logger=false")
    two_nodes("validate", *common(run_dir / "best_model", two_dir, 1), "--trainer.logger=false")
    one = json.loads((one_dir / "validate.json").read_text())["final_metrics"]
    two = json.loads((two_dir / "validate.json").read_text())
    assert two["world_size"] == 2
    for key in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_mean", "val/loss", "val/gen_len"):
        assert two["final_metrics"][key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key


def test_torchrun_launch_gives_one_record_export_and_wandb_run(tiny_models, tmp_path) -> None:
    """The README's torchrun recipe: torchrun starts the processes, Lightning detects them (TorchElastic)."""
    run_dir = tmp_path / "torchrun"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                           f"--master-port={free_port()}", str(REPO / "main.py"), "fit",
                           *common(tiny_models["bart"], run_dir, 2), "--trainer.max_epochs=1",
                           "--trainer.limit_train_batches=2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert (run_dir / "best_model").is_dir()
