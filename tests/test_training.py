"""End-to-end on CPU with the tiny models: fit -> validate -> predict for every family, learning, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from dsum.cli import DsumCLI
from tests.conftest import REPO, SAMPLE

CONFIGS = {"bart": "quickstart.yaml", "t5": "quickstart-t5.yaml", "gpt2": "quickstart-gpt2.yaml"}


def run_cli(*args: str) -> DsumCLI:
    return DsumCLI(args=list(args))


def small_run(family: str, tiny: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / CONFIGS[family]),
        f"--model.pretrained={tiny}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.predict_file={SAMPLE / 'test.csv'}",
        f"--data.cache_dir={run_dir.parent / 'cache'}",
        "--trainer.logger=false",
        *extra,
    ]


@pytest.mark.parametrize("family", ["bart", "t5", "gpt2"])
def test_fit_validate_predict(family: str, tiny_models, tmp_path) -> None:
    run_dir = tmp_path / family
    common = small_run(family, tiny_models[family], run_dir)
    fit = run_cli("fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                  "--data.val_subset=8", "--model.generation.max_new_tokens=8")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["stage"] == "fit"
    assert record["global_step"] == 3 == fit.trainer.global_step
    assert set(record["final_metrics"]) >= {
        "val/loss", "val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_mean", "val/rouge_mean_best", "val/gen_len",
    }
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    export = run_dir / "best_model"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in export.iterdir()
    }
    auto = AutoModelForCausalLM if family == "gpt2" else AutoModelForSeq2SeqLM
    loaded = auto.from_pretrained(export)
    assert loaded.get_input_embeddings().num_embeddings >= len(fit.datamodule.tokenizer)
    assert loaded.generation_config.max_new_tokens == 8

    # validate / predict the exported model, as a user would.
    val_dir = tmp_path / f"{family}-validate"
    run_cli("validate", *small_run(family, export, val_dir), "--data.val_subset=8",
            "--model.generation.max_new_tokens=8")
    val_record = json.loads((val_dir / "validate.json").read_text())
    assert val_record["stage"] == "validate" and val_record["status"] == "completed"
    assert val_record["best_metric"] == val_record["final_metrics"]["val/rouge_mean"]

    submission = tmp_path / f"{family}-submission.csv"
    run_cli("predict", *small_run(family, export, val_dir), f"--submission.path={submission}",
            "--model.generation.max_new_tokens=8")
    assert submission.read_text(encoding="utf-8").startswith(",fname,summary\n0,")  # sample_submission.csv's layout
    frame = pd.read_csv(submission, keep_default_na=False, index_col=0)
    expected = pd.read_csv(SAMPLE / "test.csv")["fname"].tolist()
    assert list(frame.columns) == ["fname", "summary"] and frame.index.tolist() == list(range(len(expected)))
    assert frame["fname"].tolist() == expected  # input order, each row once
    assert not frame["summary"].str.contains("<pad>|</s>|<s>|<\\|endoftext\\|>").any()


def test_resume_from_last_reaches_the_same_step(tiny_models, tmp_path) -> None:
    run_dir = tmp_path / "resume"
    common = small_run("bart", tiny_models["bart"], run_dir, "--trainer.limit_train_batches=2",
                       "--data.val_subset=4", "--model.generation.max_new_tokens=4")
    first = run_cli("fit", *common, "--trainer.max_epochs=1")
    assert first.trainer.global_step == 2
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    resumed = run_cli("fit", *common, "--trainer.max_epochs=3", "--ckpt_path=last")
    assert resumed.trainer.global_step == 6
    assert resumed.trainer.current_epoch == 3
    record = json.loads((run_dir / "run.json").read_text())
    assert [h["status"] for h in record["history"]] == ["completed", "completed"]
    assert record["run_id"] == run_id  # a resumed run keeps its id (and its W&B run)
    assert [h["step"] for h in record["metrics_history"]] == [2, 4, 6]


@pytest.mark.slow
def test_tiny_bart_learns_on_the_sample(tiny_models, tmp_path) -> None:
    """Label shifting, masking and decoding are right only if ROUGE rises clearly with training."""
    run_dir = tmp_path / "learn"
    common = small_run("bart", tiny_models["bart"], run_dir)
    before = run_cli("validate", *common).trainer.callback_metrics["val/rouge_mean"].item()
    fit = run_cli("fit", *common)
    after = json.loads((run_dir / "run.json").read_text())["best_metric"]
    assert before < 5.0, before
    assert after > before + 10.0, (before, after)
    assert fit.trainer.callback_metrics["val/loss"].item() < 3.0


def test_out_of_memory_is_recorded_with_a_hint(tiny_models, tmp_path, monkeypatch) -> None:
    from dsum.models import Seq2SeqSummarizer

    def boom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Seq2SeqSummarizer, "training_step", boom)
    run_dir = tmp_path / "oom"
    with pytest.raises(torch.OutOfMemoryError):
        run_cli("fit", *small_run("bart", tiny_models["bart"], run_dir), "--trainer.max_epochs=1")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert "OutOfMemoryError" in record["history"][-1]["error"]
    assert "lower data.max_tokens" in record["history"][-1]["hint"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradient_clipping_trains_under_every_precision(precision: str, tiny_models, tmp_path) -> None:
    """The baseline clipped at 1.0 (sweeps map max_grad_norm onto it) and GPU configs use mixed precision:
    Lightning refuses to clip for an optimizer that unscales its own gradients (fused AdamW)."""
    run_dir = tmp_path / precision
    fit = run_cli("fit", *small_run("bart", tiny_models["bart"], run_dir), f"--trainer.precision={precision}",
                  "--trainer.gradient_clip_val=1.0", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                  "--outputs.export_best=false")
    assert fit.trainer.global_step == 2
    optimizer = fit.trainer.optimizers[0]
    assert optimizer.defaults["fused"] is (precision == "32-true")  # fused wherever Lightning can clip with it
