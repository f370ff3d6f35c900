"""LoRA / QLoRA benchmark for the instruction-LLM family (dsum.models.InstructSummarizer).

One command (see ``tests/benchmarks/README.md``)::

    nice -n 10 python tests/benchmarks/bench_lora.py [--steps 20] [--out results.json] [--gpu auto|on|off]
        [--cpu on|off]

Each variant trains in its own subprocess (peak memory per variant), same data, seed, batch and lengths, through
``DsumCLI`` with ``configs/quickstart-llm.yaml`` and the variant's overrides:

- CPU (``--cpu off`` skips it), on the tiny chat LLM of ``python -m dsum.tiny`` (built into a temporary directory
  unless ``--tiny DIR``): ``cpu/lora`` (LoRA r 16 on every linear projection) vs ``cpu/full`` (full fine-tuning):
  median step time, tokens/s, peak RSS and ``last.ckpt`` size side by side.
- GPU (``--gpu auto`` runs it when CUDA is available): a randomly initialised ~1.1B Llama (TinyLlama's shape:
  hidden 2048, 22 layers, GQA 32/4, SwiGLU 5632; no download) in bf16: ``gpu/qlora`` (nf4, paged 8-bit AdamW),
  ``gpu/lora_bf16``, ``gpu/full`` (bf16-mixed AdamW), and ``gpu/trl_qlora``: TRL's ``SFTTrainer`` with the same
  peft config, quantization, prompts, batch and optimizer (``pip install trl``; skipped if missing). Tokens/s and
  peak GPU memory (``torch.cuda.max_memory_allocated``); the last line is ``dsum/trl tokens/s = ...x``.

Tokens/s counts the non-padding prompt + summary tokens of the timed steps (the first ``--warmup`` steps are left
out). Every variant's process sees one GPU (``CUDA_VISIBLE_DEVICES``: the first visible one), so the TRL row's HF
Trainer cannot spread over the host's GPUs with ``nn.DataParallel``. This file is not collected by pytest (its name
does not match ``test_*.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CSV = REPO / "data" / "sample" / "train.csv"
CONFIG = REPO / "configs" / "quickstart-llm.yaml"
CHILD_ENV = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
ONE_B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4}
CPU_VARIANTS = {
    "cpu/lora": [],
    "cpu/full": ["--model.lora=null"],
    # Packing (model.packing): the same loss per example (tests/test_packing.py), so only speed differs.
    "cpu/lora_packed": ["--model.packing=true"],
    "cpu/lora_random": ["--data.batching=random"],
    "cpu/lora_random_packed": ["--data.batching=random", "--model.packing=true"],
}
GPU_COMMON = ["--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed",
              "--model.gradient_checkpointing=true"]
GPU_VARIANTS = {
    "gpu/qlora": [*GPU_COMMON, "--model.quantization=nf4", "--model.optimizer=paged_adamw_8bit"],
    "gpu/lora_bf16": [*GPU_COMMON],
    "gpu/full": [*GPU_COMMON, "--model.lora=null"],
}


# ================================================================================ children
def _step_timer():
    import lightning.pytorch as L

    class StepTimer(L.Callback):
        """Wall time and non-padding tokens of every training step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self._start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._sync()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync()
            self.times.append(time.perf_counter() - self._start)
            self.tokens.append(int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum()))

        @staticmethod
        def _sync() -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

    return StepTimer()


def run_dsum(model: str, run_dir: Path, steps: int, batch_size: int, warmup: int, extra: list[str]) -> dict[str, Any]:
    import torch

    from dsum.cli import DsumCLI

    timer = _step_timer()
    args = ["fit", "--config", str(CONFIG), f"--model.pretrained={model}", f"--trainer.default_root_dir={run_dir}",
            f"--data.train_file={CSV}", f"--data.val_file={CSV.with_name('dev.csv')}", "--data.predict_file=null",
            "--data.test_file=null",
            f"--data.cache_dir={run_dir / 'cache'}", "--trainer.logger=false", f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0", "--outputs.export_best=false", f"--data.batch_size={batch_size}",
            "--trainer.enable_progress_bar=false", *extra]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cli = DsumCLI(args=args, extra_callbacks=[timer])
    times, tokens = timer.times[warmup:], timer.tokens[warmup:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    trainable, total = getattr(cli.model, "parameter_counts", (0, 0))
    return {
        "steps": len(timer.times),
        "median_step_s": statistics.median(times) if times else None,
        "tokens_per_s": sum(tokens) / sum(times) if times else None,
        "checkpoint_mb": checkpoint.stat().st_size / 2**20 if checkpoint.is_file() else None,
        "trainable_params": trainable,
        "total_params": total,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def trl_dataset(model: str | Path, run_dir: Path) -> tuple[Any, Any]:
    """The TRL row's training data: the data module's chat prompts and summaries (the dsum rows' examples), as
    a pre-tokenized ``datasets.Dataset`` of ``input_ids`` (prompt + summary) and ``completion_mask`` (1 on the
    summary), which ``SFTTrainer`` trains on as is with ``completion_only_loss``; and the data module's tokenizer
    (the data's masks added). The pieces are ``bench_vs_trl``'s, the CPU comparison with TRL.
    """
    from datasets import Dataset

    from tests.benchmarks.bench_vs_trl import chat_datamodule, split_examples, trl_rows

    dm = chat_datamodule(model, run_dir / "cache")
    return Dataset.from_dict(trl_rows(split_examples(dm, "train"))), dm.tokenizer


def run_trl(model: str, run_dir: Path, steps: int, batch_size: int, warmup: int) -> dict[str, Any]:
    """TRL SFTTrainer with the same LoRA, nf4 quantization, paged 8-bit AdamW, prompts (the data module's) and batch."""
    import torch
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data, tokenizer = trl_dataset(model, run_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(model, quantization_config=quant, dtype=torch.bfloat16,
                                                device_map={"": 0})
    base.resize_token_embeddings(len(tokenizer))
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    times: list[float] = []

    class Timer(TrainerCallback):
        start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            Timer.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - Timer.start)

    config = SFTConfig(output_dir=str(run_dir / "trl"), max_steps=steps, per_device_train_batch_size=batch_size,
                       learning_rate=5e-3, lr_scheduler_type="cosine", warmup_steps=0.05, bf16=True,
                       optim="paged_adamw_8bit", logging_steps=10**6, save_strategy="no", report_to=[],
                       completion_only_loss=True, gradient_checkpointing=True, seed=42, dataloader_num_workers=0)
    torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=base, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Timer()])
    lengths = [len(ids) for ids in data["input_ids"]]
    trainer.train()
    per_step = sum(lengths) / len(lengths) * batch_size  # TRL samples randomly: the mean tokens per step
    timed = times[warmup:]
    return {"steps": len(times), "median_step_s": statistics.median(timed) if timed else None,
            "tokens_per_s": per_step * len(timed) / sum(timed) if timed else None,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def build_one_b(tiny: Path, out: Path) -> Path:
    """A random ~1.1B Llama in bf16 with the tiny model's tokenizer (no download)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **ONE_B)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the variants' processes need this GPU's memory, not this process
    return out


def child(opts: argparse.Namespace) -> None:
    run_dir = Path(opts.run_dir)
    if opts.variant == "gpu/trl_qlora":
        result = run_trl(opts.model, run_dir, opts.steps, opts.batch_size, opts.warmup)
    else:
        variants = {**CPU_VARIANTS, **GPU_VARIANTS}
        result = run_dsum(opts.model, run_dir, opts.steps, opts.batch_size, opts.warmup, variants[opts.variant])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


# ================================================================================ parent
def one_gpu_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a variant's process, seeing one GPU: ``CUDA_VISIBLE_DEVICES`` is the first device that ``env``
    makes visible (``0`` when it names none). HF's Trainer (the TRL row) would otherwise wrap the model in
    ``nn.DataParallel`` across every GPU of the host. An empty value (no GPU) stays empty."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    first = "0" if visible is None else visible.split(",")[0].strip()
    return {**env, "CUDA_VISIBLE_DEVICES": first}


def run_variant(variant: str, model: Path, work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--model", str(model),
           "--run-dir", str(work / variant.replace("/", "_")), "--steps", str(opts.steps),
           "--batch-size", str(opts.batch_size), "--warmup", str(opts.warmup)]
    done = subprocess.run(cmd, cwd=REPO, env=one_gpu_env({**os.environ, **CHILD_ENV}), capture_output=True, text=True,
                          check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"variant": variant, **json.loads(line[len("RESULT "):])}
    return {"variant": variant, "error": (done.stderr or done.stdout)[-2000:]}


def table(rows: list[dict[str, Any]]) -> str:
    keys = ["median_step_s", "tokens_per_s", "peak_rss_mb", "peak_gpu_mb", "checkpoint_mb", "trainable_params"]
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for row in rows:
        cells = [row["variant"]]
        for key in keys:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:,.3f}" if isinstance(value, float) else f"{value:,}")
        if "error" in row:
            cells = [row["variant"], "failed: " + row["error"].strip().splitlines()[-1][:80]] + [""] * (len(keys) - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timings")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tiny", default=None, help="tiny chat LLM directory (default: built into a temp dir)")
    parser.add_argument("--gpu", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--cpu", choices=["on", "off"], default="on", help="the CPU rows (off: GPU rows only)")
    parser.add_argument("--out", default=None, help="write every figure as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts)
        return

    import torch

    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        work = Path(tmp)
        if opts.tiny:
            tiny = Path(opts.tiny)
        else:
            from dsum.tiny.llm import build_tiny_llm

            tiny = build_tiny_llm(work / "tiny_llm", CSV)
        rows = [run_variant(v, tiny, work, opts) for v in CPU_VARIANTS] if opts.cpu == "on" else []
        gpu = opts.gpu == "on" or (opts.gpu == "auto" and torch.cuda.is_available())
        if gpu:
            one_b = build_one_b(tiny, work / "llama_1b")
            rows += [run_variant(v, one_b, work, opts) for v in GPU_VARIANTS]
            try:
                import trl  # noqa: F401

                rows.append(run_variant("gpu/trl_qlora", one_b, work, opts))
            except ImportError:
                rows.append({"variant": "gpu/trl_qlora", "error": "trl is not installed (pip install trl)"})
        else:
            print("no CUDA device: GPU part skipped (run with --gpu on on a GPU machine)")
    print(table(rows))
    if opts.out:
        Path(opts.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    cpu = {r["variant"]: r for r in rows}
    if cpu.get("cpu/lora", {}).get("checkpoint_mb") and cpu.get("cpu/full", {}).get("checkpoint_mb"):
        print(f"checkpoint lora/full = {cpu['cpu/lora']['checkpoint_mb'] / cpu['cpu/full']['checkpoint_mb']:.3f}")
    for plain, packed in (("cpu/lora", "cpu/lora_packed"), ("cpu/lora_random", "cpu/lora_random_packed")):
        if cpu.get(plain, {}).get("median_step_s") and cpu.get(packed, {}).get("median_step_s"):
            print(f"{packed}/{plain} step time = {cpu[packed]['median_step_s'] / cpu[plain]['median_step_s']:.2f}x")
    if cpu.get("gpu/qlora", {}).get("tokens_per_s") and cpu.get("gpu/trl_qlora", {}).get("tokens_per_s"):
        print(f"dsum/trl tokens/s = {cpu['gpu/qlora']['tokens_per_s'] / cpu['gpu/trl_qlora']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
