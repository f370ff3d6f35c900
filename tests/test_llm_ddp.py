"""LoRA under DDP on CPU: 2 processes (gloo) through main.py give one adapter export, and validating it on two
ranks gives the same ROUGE as on one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SAMPLE, main_py

pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.ci]


def common(model: Path, run_dir: Path, devices: int) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "quickstart-llm.yaml"),
        f"--model.pretrained={model}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.cache_dir={run_dir.parent / 'cache'}",
        "--data.val_subset=13",  # batches of 5, 5, 3: the second rank repeats one
        "--data.eval_batch_size=5",
        "--data.batch_size=4",
        "--model.generation.max_new_tokens=8",
        "--trainer.logger=false",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        *(["--trainer.strategy=ddp"] if devices > 1 else []),
    ]


def test_lora_ddp_fit_exports_one_adapter_and_validates_like_one_process(tiny_llm_random, tmp_path) -> None:
    run_dir = tmp_path / "ddp"
    main_py("fit", *common(tiny_llm_random, run_dir, 2), "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
            "--model.learning_rate=0.05")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    export = run_dir / "best_model"
    assert (export / "adapter_config.json").is_file() and not (export / "model.safetensors").exists()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all("lora_" in k or "trainable_tokens" in k for k in checkpoint["state_dict"] if k.startswith("model."))

    scores = {}
    for devices in (1, 2):
        val_dir = tmp_path / f"validate{devices}"
        main_py("validate", *common(export, val_dir, devices))
        scores[devices] = json.loads((val_dir / "validate.json").read_text())["final_metrics"]
    for key in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_mean"):
        assert scores[2][key] == pytest.approx(scores[1][key], abs=1e-9), key
    for key in ("val/loss", "val/gen_len"):
        assert scores[2][key] == pytest.approx(scores[1][key], rel=1e-5), key
