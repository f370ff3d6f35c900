"""The paths users run on GPUs, which no CPU test executes. Each test is gated by :func:`tests.conftest.run_if`,
which names what the machine lacks when it skips; ``python tests/benchmarks/gpu_acceptance.py`` runs them with the
GPU benchmarks and prints one table.

- QLoRA (nf4, paged 8-bit AdamW) on a random ~100M-parameter Llama: 10 steps, the adapter exported, reloaded for
  ``validate`` (same loss as at the end of ``fit``, generation of at least ``min_new_tokens``) and ``predict``.
- 16-mixed and bf16-mixed on a KoBART-sized BART saved in float16, with clipping and the divergence guard: one
  non-finite step is injected and skipped; 16-mixed also without clipping (fused AdamW).
- T5 in bf16-mixed with Adafactor (``configs/pko-t5.yaml``).
- NCCL DDP on two GPUs: a fit, then validation metrics equal to one GPU's (``tests/test_ddp.py`` on CPU, gloo).

The first test runs everywhere: it checks the reasons ``run_if`` gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from safetensors.torch import load_file

from dsum.callbacks.divergence import NonFiniteLossGuard
from dsum.cli import DsumCLI
from tests.conftest import SAMPLE, main_py, run_if, sample_run_args

GPU = ["--trainer.accelerator=gpu", "--trainer.devices=1"]
QLORA = ["--trainer.precision=bf16-mixed", "--model.quantization=nf4"]


def gpu_run(subcommand: str, config: str, model: Path, run_dir: Path, *extra: str,
            callbacks: tuple[L.Callback, ...] = ()) -> DsumCLI:
    """``main.py <subcommand>`` in this process: a shipped config on the bundled sample, on one GPU."""
    return DsumCLI(args=[subcommand, *sample_run_args(config, model, run_dir, *GPU, *extra)],
                   extra_callbacks=callbacks)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved Hugging Face model (all its safetensors shards)."""
    return {k: v for shard in sorted(directory.glob("*.safetensors")) for k, v in load_file(shard).items()}


def check_trained_weights(module: L.LightningModule) -> None:
    """Every trained weight is float32 (mixed precision keeps fp32 master weights) and finite."""
    trained = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trained
    wrong = [f"{n}: {p.dtype}" for n, p in trained if p.dtype != torch.float32]
    assert not wrong, f"trained in half precision: {wrong[:3]}"
    assert all(torch.isfinite(p).all() for _, p in trained)


class NonFiniteLossAt(L.Callback):
    """Makes one training batch's loss NaN (the LM head's output times NaN), as a diverging step would."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx
        self._hook: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == self.batch_idx:
            head = pl_module.model.get_output_embeddings()
            self._hook = head.register_forward_hook(lambda module, args, output: output * float("nan"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class QuantizedWeightDevices(L.Callback):
    """Where the 4-bit weights are when training starts, and Lightning's device for this rank (Lightning moves
    the module to the CPU when the run ends, so this is read while it runs)."""

    def __init__(self) -> None:
        self.devices: set[torch.device] = set()
        self.root: torch.device | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.devices = {m.weight.device for m in pl_module.modules() if type(m).__name__ == "Linear4bit"}
        self.root = trainer.strategy.root_device


# ============================================================================ the decorator (CPU)
def test_run_if_says_exactly_what_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    mark = run_if(min_gpus=2, bf16=True, packages=["pytest", "dsum_no_such_package"]).mark
    assert mark.args == (True,)
    assert mark.kwargs["reason"] == ("needs 2 CUDA GPUs (found 0); native bf16 on CUDA (compute capability 8.0 or "
                                     "newer; no CUDA GPU); package dsum_no_such_package (not installed)")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    mark = run_if(min_gpus=1, bf16=True, packages=["no_such_a", "no_such_b"]).mark
    assert mark.args == (True,)
    assert mark.kwargs["reason"] == ("needs native bf16 on CUDA (compute capability 8.0 or newer; found 7.0); "
                                     "packages no_such_a, no_such_b (not installed)")
    assert run_if(min_gpus=2).mark.kwargs["reason"] == "needs 2 CUDA GPUs (found 1)"

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert run_if(min_gpus=2, bf16=True, packages=["pytest"]).mark.args == (False,)


# ============================================================================ QLoRA
@pytest.mark.gpu
@run_if(min_gpus=1, bf16=True, packages=["bitsandbytes", "peft"])
def test_qlora_nf4_llama_trains_exports_reloads_and_generates(tmp_path) -> None:
    from dsum.tiny.llm import build_tiny_llm

    base = build_tiny_llm(tmp_path / "llama", [SAMPLE / "train.csv"], d_model=768, layers=12, heads=12, ffn=2816,
                          pretrain_steps=0)
    parameters = sum(t.numel() for t in weights(base).values())
    assert 80e6 < parameters < 130e6, parameters

    run_dir = tmp_path / "run"
    evaluation = ["--data.val_subset=8", "--data.eval_batch_size=8", "--model.generation.max_new_tokens=8",
                  "--model.generation.min_new_tokens=4"]
    placed = QuantizedWeightDevices()
    fit = gpu_run("fit", "quickstart-llm.yaml", base, run_dir, *QLORA, "--model.optimizer=paged_adamw_8bit",
                  "--model.gradient_checkpointing=true", "--trainer.max_epochs=1", "--trainer.limit_train_batches=10",
                  "--data.batch_size=4", *evaluation, callbacks=(placed,))
    assert fit.trainer.global_step == 10
    assert placed.root is not None and placed.root.type == "cuda"
    assert placed.devices == {placed.root}, "the 4-bit base is not (only) on this rank's device"
    trained = {n: p.detach().float().cpu() for n, p in fit.model.model.named_parameters() if "lora_" in n}
    assert trained and all(torch.isfinite(t).all() for t in trained.values())
    fit_loss = float(fit.trainer.callback_metrics["val/loss"])

    export = run_dir / "best_model"
    assert (export / "adapter_config.json").is_file()
    val = gpu_run("validate", "quickstart-llm.yaml", export, tmp_path / "validate", *QLORA, *evaluation)
    reloaded = {n: p.detach().float().cpu() for n, p in val.model.model.named_parameters() if n in trained}
    assert reloaded.keys() == trained.keys()
    assert all(torch.equal(reloaded[n], trained[n]) for n in trained)
    metrics = val.trainer.callback_metrics
    assert float(metrics["val/loss"]) == pytest.approx(fit_loss, rel=1e-3)
    assert float(metrics["val/gen_len"]) >= 4

    submission = tmp_path / "submission.csv"
    gpu_run("predict", "quickstart-llm.yaml", export, tmp_path / "predict", *QLORA, "--data.eval_batch_size=8",
            "--model.generation.max_new_tokens=8", f"--submission.path={submission}")
    import pandas as pd

    assert pd.read_csv(submission)["fname"].tolist() == pd.read_csv(SAMPLE / "test.csv")["fname"].tolist()


# ============================================================================ KoBART-sized BART
@pytest.fixture(scope="module")
def kobart_sized(tmp_path_factory) -> Path:
    """A random BART of KoBART's shape (d_model 768, 6+6 layers, 12 heads, FFN 3072) with an 8,000-token
    tokenizer trained on the sample, saved in float16 as many hub checkpoints are."""
    from transformers import BartForConditionalGeneration

    from dsum.tiny.build import build_tiny_model

    out = build_tiny_model("bart", tmp_path_factory.mktemp("kobart_sized") / "bart", SAMPLE / "train.csv",
                           d_model=768, layers=6, heads=12, ffn=3072, vocab_size=8000)
    BartForConditionalGeneration.from_pretrained(out).to(torch.float16).save_pretrained(out)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "clip"), [
    pytest.param("16-mixed", True, marks=run_if(min_gpus=1), id="16-mixed-clipped"),
    pytest.param("bf16-mixed", True, marks=run_if(min_gpus=1, bf16=True), id="bf16-mixed-clipped"),
    pytest.param("16-mixed", False, marks=run_if(min_gpus=1), id="16-mixed-fused-adamw"),
])
def test_kobart_sized_mixed_precision_clips_and_skips_a_non_finite_step(precision: str, clip: bool, kobart_sized,
                                                                        tmp_path) -> None:
    steps = 6
    fit = gpu_run("fit", "quickstart.yaml", kobart_sized, tmp_path / "run", f"--trainer.precision={precision}",
                  *(["--trainer.gradient_clip_val=1.0"] if clip else []), "--divergence.max_nonfinite_steps=1",
                  f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--outputs.export_best=false",
                  "--data.batch_size=8", "--model.learning_rate=1e-4", callbacks=(NonFiniteLossAt(batch_idx=2),))
    trainer = fit.trainer
    assert trainer.global_step == steps
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard))
    assert guard.skipped == 1
    assert (getattr(trainer.precision_plugin, "scaler", None) is not None) is (precision == "16-mixed")
    assert trainer.optimizers[0].defaults.get("fused") is (not clip)  # Lightning clips only unfused optimizers
    check_trained_weights(fit.model)
    saved = weights(kobart_sized)
    state = fit.model.model.state_dict()
    assert any(not torch.equal(state[k].detach().cpu().half(), v) for k, v in saved.items() if k in state)


# ============================================================================ T5, bf16, Adafactor
@pytest.mark.gpu
@run_if(min_gpus=1, bf16=True)
def test_t5_trains_in_bf16_with_adafactor(tmp_path) -> None:
    from transformers.optimization import Adafactor

    from dsum.tiny.build import build_tiny_model

    model = build_tiny_model("t5", tmp_path / "t5", SAMPLE / "train.csv", d_model=512, layers=6, heads=8, ffn=1024)
    run_dir = tmp_path / "run"
    fit = gpu_run("fit", "pko-t5.yaml", model, run_dir, "--trainer.max_epochs=1", "--trainer.limit_train_batches=6",
                  "--data.val_subset=8", "--data.eval_batch_size=8", "--model.generation.max_new_tokens=8")
    trainer = fit.trainer
    assert trainer.precision == "bf16-mixed"  # the config's
    assert isinstance(trainer.optimizers[0], Adafactor)
    assert trainer.global_step == 6
    check_trained_weights(fit.model)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    exported = weights(run_dir / "best_model")
    original = weights(model)
    assert any(not torch.equal(exported[k], v) for k, v in original.items() if k in exported)


# ============================================================================ NCCL DDP
def ddp_args(model: Path, run_dir: Path, devices: int) -> list[str]:
    return sample_run_args(
        "quickstart.yaml", model, run_dir,
        # 13 examples in batches of 5, 5, 3: the second rank repeats the first (longest) batch.
        "--data.val_subset=13", "--data.eval_batch_size=5", "--model.generation.max_new_tokens=8",
        "--trainer.accelerator=gpu", f"--trainer.devices={devices}",
        *(["--trainer.strategy=ddp"] if devices > 1 else []),
    )


@pytest.mark.gpu
@run_if(min_gpus=2)
def test_nccl_ddp_on_two_gpus_matches_one_gpu(tiny_models, tmp_path) -> None:
    run_dir = tmp_path / "ddp"
    main_py("fit", *ddp_args(tiny_models["bart"], run_dir, 2), "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3", "--data.batch_size=4")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    export = run_dir / "best_model"
    assert export.is_dir()

    scores = {}
    for devices in (1, 2):
        val_dir = tmp_path / f"validate{devices}"
        main_py("validate", *ddp_args(export, val_dir, devices))
        scores[devices] = json.loads((val_dir / "validate.json").read_text())["final_metrics"]
    for key in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_mean"):
        assert scores[2][key] == pytest.approx(scores[1][key], abs=1e-9), key
    for key in ("val/loss", "val/gen_len"):  # the example the second rank repeats counts once
        assert scores[2][key] == pytest.approx(scores[1][key], rel=1e-4), key
