"""Training throughput: dsum against the Hugging Face Trainer and the original baseline's padding.

One command (see ``tests/benchmarks/README.md``)::

    nice -n 10 python tests/benchmarks/bench_throughput.py [--model DIR] [--csv PATH] [--batch-size 16]
        [--epochs 1] [--out results.json]

It trains the same model for the same epochs at the same batch size, each variant in its own
subprocess (peak RSS per variant, memory freed between them), with the same seed, tokenizer and
truncation:

- ``a/length_grouped`` and ``a/token_budget``: dsum's ``DialogueDataModule`` + ``Seq2SeqSummarizer`` +
  a Lightning ``Trainer``. The token budget is the smallest ``max_tokens`` that gives as many batches as
  ``batch_size`` does, so both do the same number of steps with the same average examples per step.
  The faster of the two is "a".
- ``b/hf_dynamic``: ``Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq`` as in HF's ``run_summarization.py``
  (random order, per-batch padding, label pads -100).
- ``b2/hf_group_by_length``: ``b`` with the Trainer's own length grouping
  (``train_sampling_strategy="group_by_length"``, transformers 5).
- ``c/hf_full_pad``: the original baseline: the whole set padded to its longest example
  (``padding="max_length"``), the Trainer's default collator.

The default model is a tiny BART with an 8,000-token BPE tokenizer trained on ``--csv``; on ``dev.csv`` it
pads like KoBART's tokenizer (whole-set padding wastes 71% of encoder positions).

Then it measures the per-trial overhead of ``python main.py fit`` (process start to first training
batch, from ``startup_seconds`` in ``run.json``) on ``--csv`` repeated to the real train.csv's 12,457
dialogues, cold (empty tokenization cache) and warm. On a CUDA
machine it also runs a KoBART-sized BART (d_model 768, 6+6 layers, vocab 30,000, bf16-mixed) through
"a", "b" and "b2".

Generation (``--gen-variants``, on the first ``--gen-rows`` rows of ``--csv``; batch 32, beams 4, 100 new
tokens, no_repeat_ngram_size 2, the untrained model): ``g/dsum_validate`` (``Trainer.validate``: loss,
generation, decoding, ROUGE) against a plain HF ``generate`` loop over the same ids sorted longest first
(``g/hf_sorted``) and in file order (``g/hf_file_order``).

Switches (``--switches``, or ``+name[=value]`` after a dsum row) measure one setting on and off in the same
run: ``compile``, ``attn=...``, ``dropout=...``, ``log_every=...``, ``progress_bar``.

Every child process (each variant and the ``main.py fit`` runs) sees one GPU: ``CUDA_VISIBLE_DEVICES`` is set to
the first visible device, so the HF Trainer rows cannot wrap the model in ``nn.DataParallel`` across the host's GPUs.

The last line printed is ``ratios: a/b=...x a/b2=...x a/c=...x gen/sorted=...x gen/file_order=...x``.

This file is not collected by pytest (its name does not match ``test_*.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import resource
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

DEFAULT_CSV = REPO / "data" / "sample" / "train.csv"
ENCODER_MAX_LEN = 512
DECODER_MAX_LEN = 100
SEED = 42
# The original baseline's optimisation settings, shared by every variant.
LEARNING_RATE = 1e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
TINY = {"d_model": 256, "layers": 3}
# KoBART's shape. Its LM head and embeddings are 30,000 rows; the tokenizer is trained like the tiny
# model's, so sequence lengths (and padding) stay those of the --vocab-size tokenizer.
KOBART_SIZED = {"d_model": 768, "layers": 6, "heads": 12, "ffn": 3072}
KOBART_ROWS = 30000
# The real competition train.csv has 12,457 dialogues: the per-trial overhead is measured at that size.
TRAIN_CSV_ROWS = 12457
VARIANTS = ("a/length_grouped", "a/token_budget", "b/hf_dynamic", "b2/hf_group_by_length", "c/hf_full_pad")
GEN_VARIANTS = ("g/dsum_validate", "g/hf_sorted", "g/hf_file_order")
# The generation setting: an untrained model, so every summary runs to max_new_tokens.
GENERATION = {"num_beams": 4, "max_new_tokens": 100, "no_repeat_ngram_size": 2}
EVAL_BATCH_SIZE = 32
# Per-row switches, appended to a dsum row's name: "a/token_budget+compile", "g/dsum_validate+attn=eager".
# Each is measured on and off in one run; see tests/benchmarks/README.md for which dsum turns on by default.
# Value: (what it does, the rows it applies to: "a/" training, "g/" generation).
SWITCHES = {
    "compile": ("model.compile=true: torch.compile of every transformer layer, dynamic shapes", ("a/", "g/")),
    "attn": ("model.attn_implementation=VALUE (sdpa, eager, flash_attention_2)", ("a/", "g/")),
    "dropout": ("every dropout probability set to VALUE (0 shows what dropout's random masks cost)", ("a/",)),
    "log_every": ("trainer.log_every_n_steps=VALUE (the benchmark's default is the CLI's 10)", ("a/",)),
    "progress_bar": ("the progress bar on (reads the logged loss every step: a device sync on GPU)", ("a/",)),
}
CHILD_ENV = {
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
}


# ============================================================================ switches
def variant_switches(variant: str) -> dict[str, str]:
    """The switches in a row name: ``"a/token_budget+compile+attn=eager"`` -> ``{"compile": "", "attn": "eager"}``.

    Raises:
        ValueError: an unknown switch, naming the row and the known ones.
    """
    switches: dict[str, str] = {}
    for part in variant.split("+")[1:]:
        name, _, value = part.partition("=")
        if name not in SWITCHES:
            raise ValueError(f"row {variant!r}: unknown switch {name!r}; known: {', '.join(SWITCHES)}")
        switches[name] = value
    return switches


def model_switches(switches: dict[str, str]) -> dict[str, Any]:
    """The ``SummarizerBase`` arguments the switches set."""
    out: dict[str, Any] = {}
    if "compile" in switches:
        out["compile"] = switches["compile"].lower() not in ("0", "false", "off")
    if switches.get("attn"):
        out["attn_implementation"] = switches["attn"]
    return out


def set_dropout(model: Any, probability: float) -> int:
    """Set every dropout probability of a Hugging Face model (``nn.Dropout`` modules and the float
    ``*dropout`` attributes BART-style layers pass to ``F.dropout``); returns how many were set."""
    import torch

    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability
            count += 1
        for name, value in vars(module).items():
            if name.endswith("dropout") and isinstance(value, float):
                setattr(module, name, probability)
                count += 1
    return count


def base_variant(variant: str) -> str:
    """The row without its switches: ``"a/token_budget+compile"`` -> ``"a/token_budget"``."""
    return variant.split("+", 1)[0]


# ============================================================================ measurement (children)
class BatchRecorder:
    """Wraps a collator and records, per batch: examples, encoder positions, real encoder tokens.

    Both trainers load batches in the main process (``num_workers=0``), in step order, so the i-th
    record is the i-th optimiser step (accumulation is 1).
    """

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.records: list[tuple[int, int, int, int, int]] = []

    collate_seconds = 0.0

    def __call__(self, examples: list[Any]) -> dict[str, Any]:
        started = time.perf_counter()
        batch = self.collate(examples)
        self.collate_seconds += time.perf_counter() - started
        mask = batch["attention_mask"]
        labels = batch["labels"]
        self.records.append((
            int(mask.shape[0]), int(mask.numel()), int(mask.sum()),
            int(labels.numel()), int((labels != -100).sum()),
        ))
        return batch


class StepClock:
    """Wall-clock time at training start and after every optimiser step (CUDA-synchronised on GPU)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.start: float | None = None
        self.step_ends: list[float] = []
        self.cpu_start = self.cpu_end = 0.0

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def train_start(self) -> None:
        self.start = self._now()
        self.cpu_start = self._cpu()

    def step_end(self) -> None:
        self.step_ends.append(self._now())
        self.cpu_end = self._cpu()


def summarize_run(clock: StepClock, recorder: BatchRecorder, warmup: int, fit_seconds: float) -> dict[str, Any]:
    """Throughput with and without the first ``warmup`` steps, padding fractions, step counts."""
    import torch

    steps = len(clock.step_ends)
    records = recorder.records[:steps]  # a trainer may have collated one batch ahead
    samples = [r[0] for r in records]
    skip = warmup if steps > warmup else 0
    timed = clock.step_ends[-1] - (clock.step_ends[skip - 1] if skip else clock.start)
    enc_total = sum(r[1] for r in records)
    dec_total = sum(r[3] for r in records)
    ends = [clock.start, *clock.step_ends]
    return {
        "steps": steps,
        "samples": sum(samples),
        "warmup_steps_excluded": skip,
        "samples_per_s": sum(samples[skip:]) / timed,
        "samples_per_s_incl_warmup": sum(samples) / (clock.step_ends[-1] - clock.start),
        "seconds_per_step": timed / (steps - skip),
        "train_seconds": clock.step_ends[-1] - clock.start,
        "fit_seconds": fit_seconds,
        "encoder_padding_fraction": 1 - sum(r[2] for r in records) / enc_total,
        "decoder_padding_fraction": 1 - sum(r[4] for r in records) / dec_total,
        "encoder_positions": enc_total,
        "mean_examples_per_step": sum(samples) / steps,
        "collate_ms_per_step": 1000 * recorder.collate_seconds / max(len(recorder.records), 1),
        # Warm-up steps' time beyond the steady step time: one-time set-up, torch.compile's compilation included.
        "warmup_overhead_s": max(0.0, (clock.step_ends[skip - 1] - clock.start if skip else 0.0)
                                 - skip * timed / max(steps - skip, 1)),
        # CPU seconds / (wall seconds x threads): well below 1 on a CPU run means other processes took
        # cores during the measurement (with several threads, one starved thread stalls them all).
        "cpu_utilisation": (clock.cpu_end - clock.cpu_start) / (clock.step_ends[-1] - clock.start)
        / torch.get_num_threads(),
        "step_seconds": [round(b - a, 4) for a, b in itertools.pairwise(ends)],
        "step_examples": samples,
        "step_encoder_positions": [r[1] for r in records],
        "step_decoder_positions": [r[3] for r in records],
    }


def peak_memory() -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    import torch

    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _seed_all() -> None:
    import random

    import numpy as np
    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


def _datamodule(opts: argparse.Namespace, batching: str = "length_grouped", max_tokens: int | None = None):
    from dsum.data import DialogueDataModule

    # val_file is required by `fit`; limit_val_batches=0 means it is never iterated.
    return DialogueDataModule(
        tokenizer_name=opts.model, train_file=opts.csv, val_file=opts.csv, batch_size=opts.batch_size,
        batching=batching, max_tokens=max_tokens, encoder_max_len=ENCODER_MAX_LEN,
        decoder_max_len=DECODER_MAX_LEN, cache_dir=opts.cache_dir, seed=SEED,
    )


def _profiled(opts: argparse.Namespace, fn: Any) -> Any:
    """Run ``fn()``; with ``--profile DIR`` under cProfile, saving stats and printing the top entries."""
    if not opts.profile:
        return fn()
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    path = Path(opts.profile) / f"{opts.variant.replace('/', '_')}{opts.tag}.prof"
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(path)
    print(f"profile: {path}", file=sys.stderr)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return result


def run_dsum(opts: argparse.Namespace) -> dict[str, Any]:
    """Variant a: DialogueDataModule + Seq2SeqSummarizer + Lightning Trainer."""
    import lightning.pytorch as L
    import torch

    from dsum.models import Seq2SeqSummarizer
    from dsum.models.base import GenerationSettings

    cuda = torch.cuda.is_available() and not opts.cpu
    switches = variant_switches(opts.variant)
    batching = base_variant(opts.variant).split("/", 1)[1]
    dm = _datamodule(opts, batching, opts.max_tokens if batching == "token_budget" else None)
    loader_factory = dm.train_dataloader
    recorder_box: list[BatchRecorder] = []

    def recorded_train_dataloader():
        loader = loader_factory()
        recorder_box.append(BatchRecorder(loader.collate_fn))
        loader.collate_fn = recorder_box[-1]
        return loader

    dm.train_dataloader = recorded_train_dataloader  # type: ignore[method-assign]
    clock = StepClock(cuda)

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            clock.train_start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end()

    L.seed_everything(SEED, verbose=False)
    model = Seq2SeqSummarizer(
        pretrained=opts.model, tokenizer=dm.tokenizer, learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY, lr_scheduler="cosine", warmup_ratio=WARMUP_RATIO,
        generation=GenerationSettings(num_beams=1, no_repeat_ngram_size=0), **model_switches(switches),
    )
    if "dropout" in switches:
        set_dropout(model.model, float(switches["dropout"]))
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1,
        precision="bf16-mixed" if cuda else "32-true",
        max_epochs=opts.epochs, max_steps=opts.max_steps or -1,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar="progress_bar" in switches, enable_model_summary=False,
        use_distributed_sampler=False,  # as dsum's CLI: the batch sampler shards itself
        log_every_n_steps=int(switches.get("log_every") or 10), callbacks=[Clock()],
    )
    started = time.perf_counter()
    _profiled(opts, lambda: trainer.fit(model, datamodule=dm))
    fit_seconds = time.perf_counter() - started
    return {
        **summarize_run(clock, recorder_box[-1], opts.warmup_steps, fit_seconds),
        "batching": batching,
        "max_tokens": opts.max_tokens if batching == "token_budget" else None,
        "precision": trainer.precision,
        "switches": switches,
    }


def _hf_texts(opts: argparse.Namespace, split: str = "train"):
    """dsum's tokenizer (masks added) and its normalised texts, plus dsum's own token ids to compare."""
    dm = _datamodule(opts)
    dm.setup(None)
    data = dm.splits[split]
    return dm.tokenizer, data.dialogues, [refs[0] for refs in data.references], data.features


def _hf_model(opts: argparse.Namespace, tokenizer: Any):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(opts.model)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))  # as Seq2SeqSummarizer does
    return model.train()


def _hf_arguments(opts: argparse.Namespace, output_dir: str, cuda: bool, optim: str | None,
                  sampling: str = "random"):
    from transformers import Seq2SeqTrainingArguments

    # b: HF's default AdamW kernel (fused for torch >= 2.8), as run_summarization.py gets it;
    # c: the original baseline's explicit `optim: adamw_torch`. Same AdamW, same hyperparameters.
    chosen = {"optim": optim} if optim else {}
    return Seq2SeqTrainingArguments(
        train_sampling_strategy=sampling,  # b2: "group_by_length", HF's own LengthGroupedSampler
        output_dir=output_dir, per_device_train_batch_size=opts.batch_size, num_train_epochs=opts.epochs,
        max_steps=opts.max_steps or -1, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="cosine", warmup_steps=WARMUP_RATIO, **chosen,
        max_grad_norm=0.0,  # dsum's Lightning Trainer does not clip by default: same work
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        seed=SEED, data_seed=SEED, bf16=cuda, use_cpu=not cuda, dataloader_pin_memory=cuda,
        dataloader_num_workers=0, disable_tqdm=True,
    )


def run_hf(opts: argparse.Namespace) -> dict[str, Any]:
    """Variants b (run_summarization style) and c (the original baseline's whole-set padding)."""
    import torch
    from datasets import Dataset
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        TrainerCallback,
        default_data_collator,
    )

    cuda = torch.cuda.is_available() and not opts.cpu
    tokenizer, dialogues, summaries, dsum_features = _hf_texts(opts)
    enc = tokenizer(dialogues, max_length=ENCODER_MAX_LEN, truncation=True)
    dec = tokenizer(text_target=summaries, max_length=DECODER_MAX_LEN, truncation=True)
    # Same tokenization as dsum: the ids must match dsum's cached features exactly.
    same = enc["input_ids"] == dsum_features["input_ids"] and dec["input_ids"] == dsum_features["labels"]
    if not same:
        print("WARNING: HF tokenization differs from dsum's features", file=sys.stderr)

    full_pad = opts.variant.startswith("c/")
    if full_pad:
        enc_len = max(len(ids) for ids in enc["input_ids"])  # <= ENCODER_MAX_LEN by truncation
        dec_len = max(len(ids) for ids in dec["input_ids"])
        enc = tokenizer(dialogues, padding="max_length", max_length=enc_len, truncation=True)
        dec = tokenizer(text_target=summaries, padding="max_length", max_length=dec_len, truncation=True)
        pad = tokenizer.pad_token_id
        # The baseline trained on pad labels; -100 keeps the objective equal and costs the same.
        labels = [[t if t != pad else -100 for t in ids] for ids in dec["input_ids"]]
        padded_to = {"encoder": enc_len, "decoder": dec_len}
    else:
        labels = dec["input_ids"]
        padded_to = None
    dataset = Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    )
    _seed_all()
    model = _hf_model(opts, tokenizer)
    collate = (
        default_data_collator if full_pad
        else DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    )
    recorder = BatchRecorder(collate)
    clock = StepClock(cuda)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.train_start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    with tempfile.TemporaryDirectory(prefix="bench_hf_") as output_dir:
        trainer = Seq2SeqTrainer(
            model=model, args=_hf_arguments(opts, output_dir, cuda, "adamw_torch" if full_pad else None,
                                            "group_by_length" if opts.variant.startswith("b2/") else "random"),
            train_dataset=dataset,
            data_collator=recorder, processing_class=tokenizer, callbacks=[Clock()],
        )
        started = time.perf_counter()
        _profiled(opts, trainer.train)
        fit_seconds = time.perf_counter() - started
    return {
        **summarize_run(clock, recorder, opts.warmup_steps, fit_seconds),
        "tokenization_matches_dsum": same,
        "optim": str(trainer.args.optim.value if hasattr(trainer.args.optim, "value") else trainer.args.optim),
        "padded_to": padded_to,
        "precision": "bf16-mixed" if cuda else "32-true",
    }


# ============================================================================= generation (children)
def _gen_settings(opts: argparse.Namespace):
    from dsum.models.base import GenerationSettings

    return GenerationSettings(**{**GENERATION, "max_new_tokens": opts.gen_new_tokens})


def _generation_result(seconds: float, batch_seconds: list[float], examples: int, tokens: int,
                       batches: int) -> dict[str, Any]:
    return {"samples_per_s": examples / seconds, "seconds": seconds, "examples": examples, "batches": batches,
            "generated_tokens": tokens, "tokens_per_s": tokens / seconds,
            "batch_seconds": [round(t, 4) for t in batch_seconds]}


def run_dsum_generation(opts: argparse.Namespace) -> dict[str, Any]:
    """g/dsum_validate: ``trainer.validate`` as every epoch of a sweep trial runs it (loss, generation,
    decoding, ROUGE), with ``eval_batch_size`` 32 over dsum's longest-first batches."""
    import lightning.pytorch as L
    import torch

    from dsum.data import DialogueDataModule
    from dsum.models import Seq2SeqSummarizer

    cuda = torch.cuda.is_available() and not opts.cpu
    switches = variant_switches(opts.variant)
    dm = DialogueDataModule(
        tokenizer_name=opts.model, val_file=opts.gen_csv, eval_batch_size=EVAL_BATCH_SIZE,
        encoder_max_len=ENCODER_MAX_LEN, decoder_max_len=DECODER_MAX_LEN, cache_dir=opts.cache_dir, seed=SEED,
    )
    L.seed_everything(SEED, verbose=False)
    model = Seq2SeqSummarizer(pretrained=opts.model, tokenizer=dm.tokenizer, generation=_gen_settings(opts),
                              **model_switches(switches))
    generated: list[int] = []
    generate_ids = model.generate_ids

    def counted(batch: dict[str, Any]) -> Any:
        ids = generate_ids(batch)
        generated.append(int((ids != model.tokenizer.pad_token_id).sum()))
        return ids

    model.generate_ids = counted  # type: ignore[method-assign]
    marks: list[float] = []

    class Clock(L.Callback):
        def on_validation_start(self, trainer, pl_module):
            marks.append(time.perf_counter())

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            marks.append(time.perf_counter())

        def on_validation_end(self, trainer, pl_module):
            marks.append(time.perf_counter())

    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[Clock()],
    )
    metrics = _profiled(opts, lambda: trainer.validate(model, datamodule=dm, verbose=False))
    seconds = marks[-1] - marks[0]
    return {**_generation_result(seconds, [b - a for a, b in itertools.pairwise(marks[:-1])],
                                 len(dm.splits["val"].dialogues), sum(generated), len(generated)),
            "metrics": metrics[0] if metrics else {}, "switches": switches}


def run_hf_generation(opts: argparse.Namespace) -> dict[str, Any]:
    """g/hf_sorted and g/hf_file_order: a plain loop of ``model.generate`` + ``batch_decode``, batches of 32,
    over the same token ids, longest first (sorted by hand) or in the file's order."""
    import torch

    cuda = torch.cuda.is_available() and not opts.cpu
    gen_opts = argparse.Namespace(**{**vars(opts), "csv": opts.gen_csv})
    tokenizer, dialogues, _, dsum_features = _hf_texts(gen_opts, split="val")
    enc = tokenizer(dialogues, max_length=ENCODER_MAX_LEN, truncation=True)
    same = enc["input_ids"] == dsum_features["input_ids"]
    ids = enc["input_ids"]
    order = list(range(len(ids)))
    if opts.variant.startswith("g/hf_sorted"):
        order.sort(key=lambda i: -len(ids[i]))
    _seed_all()
    model = _hf_model(opts, tokenizer).eval()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    kwargs = _gen_settings(opts).generate_kwargs()
    generated, marks = 0, [time.perf_counter()]

    def loop() -> None:
        nonlocal generated
        for start in range(0, len(order), EVAL_BATCH_SIZE):
            rows = [{"input_ids": ids[i]} for i in order[start : start + EVAL_BATCH_SIZE]]
            batch = tokenizer.pad(rows, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = model.generate(**batch, **kwargs)
            tokenizer.batch_decode(out, skip_special_tokens=True)
            generated += int((out[:, 1:] != tokenizer.pad_token_id).sum())
            marks.append(time.perf_counter())

    marks[0] = time.perf_counter()
    _profiled(opts, loop)
    return {**_generation_result(marks[-1] - marks[0], [b - a for a, b in itertools.pairwise(marks)], len(ids),
                                 generated, len(marks) - 1),
            "tokenization_matches_dsum": same}


def child_main(opts: argparse.Namespace) -> None:
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.variant.startswith("g/"):
        result = run_dsum_generation(opts) if opts.variant.startswith("g/dsum") else run_hf_generation(opts)
    else:
        result = run_dsum(opts) if opts.variant.startswith("a/") else run_hf(opts)
    result.update(peak_memory(), variant=opts.variant, torch_threads=torch.get_num_threads())
    Path(opts.result_file).write_text(json.dumps(result, indent=2))


# ============================================================================= orchestration (parent)
def build_model(csv: str, out: Path, sizes: dict[str, int], embedding_rows: int = 0) -> str:
    """A seeded random BART with a tokenizer trained on ``csv``.

    ``embedding_rows`` pads the embeddings and LM head to that many rows (unused by the tokenizer), so
    a model can have KoBART's 30k-wide output layer while keeping this tokenizer's sequence lengths.
    """
    from transformers import AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    from dsum.tiny.build import build_tiny_model

    hf_logging.disable_progress_bar()
    path = build_tiny_model("bart", out, [csv], **sizes)
    if _vocab_rows(path) < embedding_rows:
        model = AutoModelForSeq2SeqLM.from_pretrained(path)
        model.resize_token_embeddings(embedding_rows, mean_resizing=False)
        model.save_pretrained(path)
    return str(path)


def _vocab_rows(model: str | Path) -> int:
    """Rows of a saved model's input embeddings and LM head (its ``config.vocab_size``)."""
    return int(json.loads((Path(model) / "config.json").read_text())["vocab_size"])


def train_sized_csv(csv: str, rows: int, out: Path) -> str:
    """``csv``'s rows repeated up to ``rows`` dialogues, each copy with its own ``fname``."""
    import pandas as pd

    frame = pd.read_csv(csv)
    copies = pd.concat([frame] * math.ceil(rows / len(frame)), ignore_index=True).iloc[:rows].copy()
    copies["fname"] = [f"{name}#{i // len(frame)}" for i, name in enumerate(copies["fname"])]
    copies.to_csv(out, index=False)
    return str(out)


def token_budget_for(opts: argparse.Namespace) -> dict[str, Any]:
    """The smallest ``max_tokens`` whose token-budget batches are no more than ``ceil(N / batch_size)``.

    Equal step counts mean equal average examples per step, so both dsum batchings do the same work.
    """
    from dsum.data.batching import DialogueBatchSampler

    dm = _datamodule(opts)
    dm.setup(None)  # also fills the tokenization cache the "a" children reuse
    features = dm.splits["train"].features
    src, tgt = features["source_length"], features["target_length"]
    target = math.ceil(len(src) / opts.batch_size)

    def batches(max_tokens: int) -> int:
        return len(DialogueBatchSampler(src, tgt, mode="token_budget", max_tokens=max_tokens, seed=SEED))

    low, high = ENCODER_MAX_LEN + DECODER_MAX_LEN, ENCODER_MAX_LEN + DECODER_MAX_LEN
    while batches(high) > target:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if batches(middle) <= target:
            high = middle
        else:
            low = middle + 1
    count = batches(high)
    return {"max_tokens": high, "batches": count, "length_grouped_batches": target,
            "mean_examples_per_batch": len(src) / count, "_lengths": (src, tgt)}


def padding_free_bound(results: dict[str, dict[str, Any]], src: list[int], tgt: list[int]) -> dict[str, Any] | None:
    """How fast the epoch would be with no padding at all, from a step-time model fitted to every step.

    ``seconds = k0 + k1 * encoder positions + k2 * decoder positions + k3 * n * encoder length**2``
    (per step; the last term is self-attention). Evaluated at the examples' true lengths, it bounds
    what any batching can reach at equal work, so a target above ``bound_ratios`` needs less work per
    example (precision, kernels), not better batching.
    """
    import numpy as np

    features, seconds, modeled = [], [], {}
    for name, r in results.items():
        n = np.array(r["step_examples"], float)
        enc = np.array(r["step_encoder_positions"], float)
        dec = np.array(r["step_decoder_positions"], float)
        x = np.stack([np.ones_like(n), enc, dec, enc * enc / n], axis=1)
        skip = r["warmup_steps_excluded"]
        features.append(x[skip:])
        seconds.append(np.array(r["step_seconds"])[skip:])
        modeled[name] = x
    x_all, y_all = np.concatenate(features), np.concatenate(seconds)
    if len(y_all) < 8:
        return None
    coef, *_ = np.linalg.lstsq(x_all, y_all, rcond=None)
    r2 = 1 - float(((y_all - x_all @ coef) ** 2).sum() / ((y_all - y_all.mean()) ** 2).sum())
    s, t = np.array(src, float), np.array(tgt, float)
    steps = min(r["steps"] for r in results.values())
    ideal = float(steps * coef[0] + coef[1] * s.sum() + coef[2] * t.sum() + coef[3] * (s * s).sum())
    epochs = {name: float((x @ coef).sum()) for name, x in modeled.items()}
    return {
        "coefficients": {"per_step_s": coef[0], "per_encoder_position_s": coef[1],
                         "per_decoder_position_s": coef[2], "per_n_len2_s": coef[3]},
        "r2": r2,
        "padding_free_epoch_s": ideal,
        "modeled_epoch_s": epochs,
        # Ratio of each variant's modeled epoch to the padding-free one: the best possible a/x.
        "bound_ratios": {name: e / ideal for name, e in epochs.items()},
    }


def one_gpu_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child process, seeing one GPU: ``CUDA_VISIBLE_DEVICES`` is the first device that ``env`` makes
    visible (``0`` when it names none). HF's Trainer would otherwise wrap the model in ``nn.DataParallel`` across
    every GPU of the host (rows b, b2, c), and ``main.py`` could start on several. An empty value (no GPU) stays
    empty."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    first = "0" if visible is None else visible.split(",")[0].strip()
    return {**env, "CUDA_VISIBLE_DEVICES": first}


def run_child(opts: argparse.Namespace, variant: str, model: str, tag: str, extra: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = handle.name
    cmd = [
        sys.executable, __file__, "--variant", variant, "--model", model, "--csv", opts.csv,
        "--batch-size", str(opts.batch_size), "--epochs", str(opts.epochs), "--warmup-steps",
        str(opts.warmup_steps), "--max-steps", str(opts.max_steps), "--cache-dir", opts.cache_dir,
        "--result-file", result_file, "--threads", str(opts.threads), f"--tag={tag}", *extra,
    ]
    if getattr(opts, "gen_csv", None):
        cmd += ["--gen-csv", opts.gen_csv, "--gen-new-tokens", str(opts.gen_new_tokens)]
    if opts.cpu:
        cmd.append("--cpu")
    if opts.profile:
        cmd += ["--profile", opts.profile]
    print(f"-- {variant}{tag} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=one_gpu_env({**os.environ, **CHILD_ENV}), capture_output=not opts.verbose,
                          text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or "")[-4000:] if not opts.verbose else ""
        raise SystemExit(f"variant {variant}{tag} failed (exit {done.returncode}):\n{tail}")
    if opts.profile and not opts.verbose:
        Path(opts.profile, f"{variant.replace('/', '_')}{tag}.txt").write_text(done.stderr)
    result = json.loads(Path(result_file).read_text())
    os.unlink(result_file)
    result["process_seconds"] = time.perf_counter() - started
    work = f"{result['steps']} steps" if "steps" in result else f"{result['examples']} examples"
    print(f"   {result['samples_per_s']:.2f} samples/s, {work}, {result['process_seconds']:.0f}s",
          file=sys.stderr, flush=True)
    return result


def startup_overhead(opts: argparse.Namespace, model: str, cuda: bool) -> dict[str, Any]:
    """`python main.py fit` process start -> first training batch, with a cold then a warm cache.

    The training file is ``--csv`` repeated to ``--startup-rows`` dialogues (the real train.csv's
    size), so tokenization costs what it costs in a real sweep trial; validation reads ``--csv``.
    """
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        cache = Path(tmp) / "cache"
        train_csv = opts.csv
        if opts.startup_rows:
            train_csv = train_sized_csv(opts.csv, opts.startup_rows, Path(tmp) / "train_sized.csv")
        out["train_rows"] = opts.startup_rows or None
        for label in ("cold", "warm"):
            run_dir = Path(tmp) / label
            cmd = [
                sys.executable, str(REPO / "main.py"), "fit", "--config", str(REPO / "configs/quickstart.yaml"),
                f"--model.init_args.pretrained={model}", f"--data.train_file={train_csv}",
                f"--data.val_file={opts.csv}", "--data.test_file=null", "--data.predict_file=null",
                f"--data.cache_dir={cache}", f"--data.batch_size={opts.batch_size}",
                f"--data.encoder_max_len={ENCODER_MAX_LEN}", f"--data.decoder_max_len={DECODER_MAX_LEN}",
                f"--trainer.default_root_dir={run_dir}", "--trainer.logger=false",
                f"--trainer.accelerator={'gpu' if cuda else 'cpu'}", "--trainer.max_steps=1",
                "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
                "--outputs.export_best=false",
            ]
            print(f"-- startup ({label}) ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, env=one_gpu_env({**os.environ, **CHILD_ENV}), capture_output=True,
                                  text=True, check=False)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"main.py fit ({label}) failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            record = json.loads((run_dir / "run.json").read_text())
            seconds = record["history"][-1].get("startup_seconds")
            if seconds is None:
                raise SystemExit(f"{run_dir / 'run.json'} has no startup_seconds; is psutil installed?")
            out[label] = {"startup_seconds": seconds, "process_wall_seconds": wall}
            print(f"   {seconds:.1f}s to first batch ({wall:.1f}s whole process)", file=sys.stderr, flush=True)
    return out


def environment() -> dict[str, Any]:
    import lightning
    import torch
    import transformers

    cpu = "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cpu_count": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "lightning": lightning.__version__,
    }


def print_table(title: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    width = max(18, *(len(n) for n in results))
    header = f"{'variant':<{width}} {'samples/s':>9} {'(incl warm-up)':>14} {'enc pad':>8} {'dec pad':>8} " \
             f"{'peak RSS MB':>11} {'steps':>5} {'ex/step':>7} {'cpu%':>5} {'collate ms':>10}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        gpu = f" (GPU {r['peak_gpu_mb']:.0f} MB)" if "peak_gpu_mb" in r else ""
        print(f"{name:<{width}} {r['samples_per_s']:>9.2f} {r['samples_per_s_incl_warmup']:>14.2f} "
              f"{r['encoder_padding_fraction']:>8.1%} {r['decoder_padding_fraction']:>8.1%} "
              f"{r['peak_rss_mb']:>11.0f} {r['steps']:>5} {r['mean_examples_per_step']:>7.1f} "
              f"{r['cpu_utilisation']:>5.0%} {r.get('collate_ms_per_step', float('nan')):>10.2f}{gpu}")
    differ = [n for n, r in results.items() if r.get("tokenization_matches_dsum") is False]
    if differ:
        print(f"WARNING: {', '.join(differ)}: HF tokenization differs from dsum's; the work is not equal")
    starved = [n for n, r in results.items() if "peak_gpu_mb" not in r and r["cpu_utilisation"] < 0.8]
    if starved:
        print(f"WARNING: {', '.join(starved)} got under 80% of its CPU threads' time: other processes were "
              "running; rerun on a quiet machine or with --repeats 3")


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of a variant's repeats (noise on a shared machine only ever slows a run down)."""
    best = dict(max(trials, key=lambda r: r["samples_per_s"]))
    best["trials_samples_per_s"] = [r["samples_per_s"] for r in trials]
    return best


def best_dsum(results: dict[str, dict[str, Any]], switched: bool = False) -> str:
    """The fastest dsum row: of the default mode (rows without switches), or of every mode (``switched``)."""
    rows = [n for n in results if n.startswith("a/") and (switched or "+" not in n)]
    return max(rows or [n for n in results if n.startswith("a/")], key=lambda n: results[n]["samples_per_s"])


def generation_csv(csv: str, rows: int, out: Path) -> str:
    """The first ``rows`` rows of ``csv`` (all of them for 0), for the generation rows."""
    import pandas as pd

    frame = pd.read_csv(csv)
    if not rows or rows >= len(frame):
        return csv
    frame.iloc[:rows].to_csv(out, index=False)
    return str(out)


def print_generation_table(title: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    width = max(18, *(len(n) for n in results))
    header = f"{'variant':<{width}} {'samples/s':>9} {'seconds':>8} {'batches':>7} {'gen tokens':>10} " \
             f"{'tokens/s':>8} {'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<{width}} {r['samples_per_s']:>9.2f} {r['seconds']:>8.1f} {r['batches']:>7} "
              f"{r['generated_tokens']:>10} {r['tokens_per_s']:>8.0f} {r['peak_rss_mb']:>11.0f}")
    tokens = {r["generated_tokens"] for r in results.values()}
    if len(tokens) > 1:
        print("note: the rows generated different numbers of tokens (see the column); compare tokens/s too")
    differ = [n for n, r in results.items() if r.get("tokenization_matches_dsum") is False]
    if differ:
        print(f"WARNING: {', '.join(differ)}: HF tokenization differs from dsum's; the work is not equal")


def all_ratios(results: dict[str, dict[str, Any]], generation: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``a/b``, ``a/b2``, ``a/c`` for dsum's default mode (``a``) and, when a switched row is faster, its best
    mode (``best/...``); ``gen/sorted`` and ``gen/file_order``: dsum's validation against HF ``generate``."""
    ratios: dict[str, float] = {}
    peers = (("b", "b/hf_dynamic"), ("b2", "b2/hf_group_by_length"), ("c", "c/hf_full_pad"))
    default, best = best_dsum(results), best_dsum(results, switched=True)
    for label, row in (("a", default), ("best", best)) if best != default else (("a", default),):
        for key, name in peers:
            if name in results:
                ratios[f"{label}/{key}"] = results[row]["samples_per_s"] / results[name]["samples_per_s"]
    dsum_rows = [n for n in generation if n.startswith("g/dsum")]
    if dsum_rows:
        plain = "g/dsum_validate" if "g/dsum_validate" in generation else dsum_rows[0]
        fastest = max(dsum_rows, key=lambda n: generation[n]["samples_per_s"])
        for label, row in (("gen", plain), ("gen_best", fastest)) if fastest != plain else (("gen", plain),):
            for key, name in (("sorted", "g/hf_sorted"), ("file_order", "g/hf_file_order")):
                if name in generation:
                    ratios[f"{label}/{key}"] = generation[row]["samples_per_s"] / generation[name]["samples_per_s"]
    return ratios


def parent_main(opts: argparse.Namespace) -> None:
    import logging

    import datasets
    import torch

    datasets.disable_progress_bars()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # truncation notes, once per token-budget search

    cuda = torch.cuda.is_available() and not opts.cpu
    report: dict[str, Any] = {
        "environment": environment(),
        "settings": {"csv": opts.csv, "batch_size": opts.batch_size, "epochs": opts.epochs,
                     "warmup_steps_excluded": opts.warmup_steps, "encoder_max_len": ENCODER_MAX_LEN,
                     "decoder_max_len": DECODER_MAX_LEN, "learning_rate": LEARNING_RATE, "seed": SEED,
                     "max_steps": opts.max_steps or None},
    }
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        opts.cache_dir = str(Path(tmp) / "cache")
        if opts.model is None:
            sizes = {**TINY, "vocab_size": opts.vocab_size}
            print(f"-- building tiny BART {sizes} ...", file=sys.stderr, flush=True)
            opts.model = build_model(opts.csv, Path(tmp) / "tiny_bart", sizes, opts.embedding_rows)
            rows = _vocab_rows(opts.model)  # after any padding to --embedding-rows
            report["settings"]["model"] = "tiny BART " + json.dumps({**sizes, "embedding_rows": rows})
        else:
            report["settings"]["model"] = opts.model
        budget = token_budget_for(opts)
        lengths = budget.pop("_lengths")
        report["token_budget"] = budget
        trials: dict[str, list[dict[str, Any]]] = {v: [] for v in opts.variants}
        for _ in range(opts.repeats):
            for variant in opts.variants:  # interleaved, so a slow spell on the machine hits all variants
                extra = (["--max-tokens", str(budget["max_tokens"])] if base_variant(variant) == "a/token_budget"
                         else [])
                trials[variant].append(run_child(opts, variant, opts.model, "", extra))
        results = {v: best_trial(ts) for v, ts in trials.items()}
        report["variants"] = results

        generation: dict[str, dict[str, Any]] = {}
        if opts.gen_variants:
            opts.gen_csv = generation_csv(opts.csv, opts.gen_rows, Path(tmp) / "generation.csv")
            report["settings"]["generation"] = {**GENERATION, "max_new_tokens": opts.gen_new_tokens,
                                                "batch_size": EVAL_BATCH_SIZE,
                                                "rows": opts.gen_rows or None}
            gen_trials: dict[str, list[dict[str, Any]]] = {v: [] for v in opts.gen_variants}
            for _ in range(opts.gen_repeats):
                for variant in opts.gen_variants:
                    gen_trials[variant].append(run_child(opts, variant, opts.model, "", []))
            generation = {v: best_trial(ts) for v, ts in gen_trials.items()}
            report["generation"] = generation
        # The bound models a whole epoch; a --max-steps smoke run covers only part of one.
        # Rows with switches change the cost per position, so only the default-mode rows are fitted.
        plain = {n: r for n, r in results.items() if "+" not in n}
        report["padding_free"] = None if opts.max_steps else padding_free_bound(plain, *lengths)

        if not opts.skip_startup:
            report["startup"] = startup_overhead(opts, opts.model, cuda)

        if opts.large == "on" or (opts.large == "auto" and cuda):
            print("-- building KoBART-sized BART (768, 6+6, vocab 30k) ...", file=sys.stderr, flush=True)
            large = build_model(opts.csv, Path(tmp) / "kobart_sized", {**KOBART_SIZED, "vocab_size": opts.vocab_size},
                                KOBART_ROWS)
            large_opts = argparse.Namespace(
                **{**vars(opts), "model": str(large), "cache_dir": str(Path(tmp) / "cache_large")}
            )
            large_budget = token_budget_for(large_opts)  # with its tokenizer; also warms its tokenization cache
            dsum_row = base_variant(best_dsum(results))  # the tiny model's faster dsum batching
            extra = ["--max-tokens", str(large_budget["max_tokens"])] if dsum_row == "a/token_budget" else []
            large_trials: dict[str, list[dict[str, Any]]] = {
                dsum_row: [], "b/hf_dynamic": [], "b2/hf_group_by_length": []}
            for _ in range(opts.repeats):
                for variant, runs in large_trials.items():
                    runs.append(run_child(large_opts, variant, large, "-kobart", extra if variant == dsum_row else []))
            report["large"] = {v: best_trial(ts) for v, ts in large_trials.items()}

    print_table(f"Training throughput: {Path(opts.csv).name}, batch {opts.batch_size}, {opts.epochs} epoch(s), "
                f"{'GPU ' + str(report['environment']['gpu']) if cuda else 'CPU'}, model {report['settings']['model']}; "
                f"samples/s excludes the first {opts.warmup_steps} steps", results)
    print(f"token_budget: max_tokens={budget['max_tokens']} -> {budget['batches']} batches "
          f"({budget['mean_examples_per_batch']:.1f} examples/batch; length_grouped: "
          f"{budget['length_grouped_batches']})")
    best = best_dsum(results)
    if len([n for n in results if n.startswith("a/") and "+" not in n]) > 1:
        print(f"best dsum batching: {best}")
    best_mode = best_dsum(results, switched=True)
    if best_mode != best:
        print(f"best dsum mode: {best_mode}")
    compiled = {n: r["warmup_overhead_s"] for n, r in results.items() if "compile" in r.get("switches", {})}
    for name, seconds in compiled.items():
        print(f"{name}: compile and warm-up {seconds:.1f}s beyond the steady step time (first "
              f"{results[name]['warmup_steps_excluded']} steps; {best}: {results[best]['warmup_overhead_s']:.1f}s)")
    if generation:
        print_generation_table(
            f"Generation: {report['settings']['generation']['rows'] or 'all'} rows of {Path(opts.csv).name}, batch "
            f"{EVAL_BATCH_SIZE}, beams {GENERATION['num_beams']}, {opts.gen_new_tokens} new tokens, "
            f"no_repeat_ngram_size {GENERATION['no_repeat_ngram_size']}, untrained model", generation)
    if "startup" in report:
        s = report["startup"]
        rows = f"{s['train_rows']:,} training dialogues" if s["train_rows"] else Path(opts.csv).name
        print(f"per-trial overhead (main.py fit on {rows}, process start -> first training batch): "
              f"cold {s['cold']['startup_seconds']:.1f}s, warm {s['warm']['startup_seconds']:.1f}s")
    if "large" in report:
        print_table("KoBART-sized BART (d_model 768, 6+6 layers, vocab 30k), "
                    + ("bf16-mixed" if cuda else "fp32 on CPU"), report["large"])
        large_rows = report["large"]
        a_row = next(n for n in large_rows if n.startswith("a/"))
        report["large_ratio_a_b"] = large_rows[a_row]["samples_per_s"] / large_rows["b/hf_dynamic"]["samples_per_s"]
        report["large_ratio_a_b2"] = (large_rows[a_row]["samples_per_s"]
                                      / large_rows["b2/hf_group_by_length"]["samples_per_s"])
        print(f"KoBART-sized: a/b={report['large_ratio_a_b']:.2f}x a/b2={report['large_ratio_a_b2']:.2f}x")
    bound = report["padding_free"]
    if bound and not cuda:
        b = bound["bound_ratios"]
        peers = ("b/hf_dynamic", "b2/hf_group_by_length", "c/hf_full_pad")
        limits = " ".join(f"a/{k.split('/')[0]}<={b[k]:.2f}x" for k in peers if k in b)
        print(f"padding-free bound (step-time model, R^2={bound['r2']:.3f}): {best} runs at "
              f"{1 / b[best]:.0%} of the no-padding speed; with no padding at all {limits}")

    ratios = all_ratios(results, generation)
    report["best_dsum"] = best
    report["best_dsum_mode"] = best_mode
    report["ratios"] = ratios
    report["environment"]["loadavg_at_end"] = os.getloadavg()
    if opts.out:
        Path(opts.out).write_text(json.dumps(report, indent=2))
        print(f"results: {opts.out}")
    print("ratios: " + " ".join(f"{k}={v:.2f}x" for k, v in ratios.items()))


def expand_rows(variants: str, gen_variants: str, switches: str) -> tuple[list[str], list[str]]:
    """The training and generation rows to run: the listed ones, plus one row per ``switches`` entry on
    ``a/token_budget`` (else the first dsum training row) and on the first dsum generation row, where the
    switch applies (``a/token_budget+compile``, ``g/dsum_validate+compile``).

    Raises:
        ValueError: an unknown row or switch, or no dsum training row, naming the value.
    """
    def split(text: str) -> list[str]:
        return [v.strip() for v in text.split(",") if v.strip()]

    train, gen, extra = split(variants), split(gen_variants), split(switches)
    for rows, known, option in ((train, VARIANTS, "--variants"), (gen, GEN_VARIANTS, "--gen-variants")):
        unknown = [v for v in rows if base_variant(v) not in known]
        if unknown:
            raise ValueError(f"{option}: unknown row(s) {', '.join(unknown)}; known: {', '.join(known)}")
        for row in rows:
            if "+" in row and not row.startswith(("a/", "g/dsum")):
                raise ValueError(f"{option}: {row}: switches apply to dsum rows only")
    unknown = [switch for switch in extra if switch.partition("=")[0] not in SWITCHES]
    if unknown:
        raise ValueError(f"--switches: unknown {', '.join(unknown)}; known: {', '.join(SWITCHES)}")
    if not any(v.startswith("a/") for v in train):
        raise ValueError(f"--variants: need at least one a/ variant, from {', '.join(VARIANTS)}; got {train}")
    for rows, prefix in ((train, "a/"), (gen, "g/dsum")):
        # Training switches go on the token-budget row (dsum's faster batching) when it is run.
        first = next((v for v in sorted(rows, key=lambda v: v != "a/token_budget") if v.startswith(prefix)), None)
        if first is not None:
            for switch in extra:
                row = f"{base_variant(first)}+{switch}"
                if prefix[:2] in SWITCHES[switch.partition("=")[0]][1] and row not in rows:
                    rows.append(row)
    for row in train + gen:
        for switch in variant_switches(row):
            if row[:2] not in SWITCHES[switch][1]:
                raise ValueError(f"row {row}: switch {switch!r} does not apply to {row[:2]} rows")
    return train, gen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF BART directory (default: a tiny BART built from --csv)")
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="labelled CSV to train on (fname,dialogue,summary)")
    parser.add_argument("--batch-size", type=int, default=16, help="training examples per step (all variants)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs")
    parser.add_argument("--out", help="write all figures as JSON here")
    parser.add_argument("--vocab-size", type=int, default=8000,
                        help="vocabulary of the built tokenizer (default tiny BART and KoBART-sized run). 8000 "
                             "splits dev.csv like KoBART's tokenizer does: the whole-set padding baseline wastes 71%% "
                             "of encoder positions, as in the original system")
    parser.add_argument("--embedding-rows", type=int, default=0,
                        help="pad the default tiny BART's embeddings and LM head to this many rows (KoBART: 30000); "
                             "0 keeps the tokenizer's size")
    parser.add_argument("--warmup-steps", type=int, default=3,
                        help="first steps left out of samples/s (the incl. column keeps them)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated training rows, from " + ", ".join(VARIANTS) + "; a dsum row may carry "
                        "switches: a/token_budget+compile")
    parser.add_argument("--switches", default="",
                        help="comma-separated switches, each measured as one more row of the first a/ variant "
                        "(training) and of g/dsum_validate (generation), e.g. compile,attn=eager,dropout=0. "
                        "Known: " + "; ".join(f"{k}: {v[0]}" for k, v in SWITCHES.items()))
    parser.add_argument("--gen-variants", default=",".join(GEN_VARIANTS),
                        help="comma-separated generation rows, from " + ", ".join(GEN_VARIANTS) + " (switches as "
                        "above); empty skips generation")
    parser.add_argument("--gen-rows", type=int, default=128,
                        help="generation rows: the first N rows of --csv (0: all)")
    parser.add_argument("--gen-new-tokens", type=int, default=GENERATION["max_new_tokens"],
                        help="max_new_tokens of the generation rows (fewer only for smoke runs)")
    parser.add_argument("--gen-repeats", type=int, default=1,
                        help="run every generation row this many times, interleaved, and keep each one's fastest")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every variant this many times, interleaved, and keep each one's fastest")
    parser.add_argument("--max-steps", type=int, default=0, help="stop every variant after this many steps (smoke runs)")
    parser.add_argument("--large", choices=("auto", "on", "off"), default="auto",
                        help="KoBART-sized run: auto = only when CUDA is available")
    parser.add_argument("--skip-startup", action="store_true", help="skip the main.py per-trial overhead runs")
    parser.add_argument("--startup-rows", type=int, default=TRAIN_CSV_ROWS,
                        help="training dialogues for the overhead runs (--csv repeated; 0: --csv as is)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per variant (0: torch's default)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when CUDA is available")
    parser.add_argument("--profile", help="cProfile every variant; stats and listings go to this directory")
    parser.add_argument("--verbose", action="store_true", help="show the variants' own output")
    # Internal: one variant in this process.
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--max-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--gen-csv", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.csv = str(Path(opts.csv).resolve())
    if opts.model:
        opts.model = str(Path(opts.model).resolve())
    if opts.profile:
        opts.profile = str(Path(opts.profile).resolve())
    if opts.variant:  # a child: one row, checked by the parent
        return opts
    try:
        opts.variants, opts.gen_variants = expand_rows(opts.variants, opts.gen_variants, opts.switches)
    except ValueError as error:
        parser.error(str(error))
    if min(opts.batch_size, opts.epochs, opts.repeats, opts.gen_repeats) <= 0:
        parser.error("--batch-size, --epochs, --repeats and --gen-repeats must be positive")
    return opts


if __name__ == "__main__":
    for key, value in CHILD_ENV.items():
        os.environ.setdefault(key, value)
    options = parse_args()
    child_main(options) if options.variant else parent_main(options)
