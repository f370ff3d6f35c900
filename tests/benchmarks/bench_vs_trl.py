"""dsum's instruction-LLM family against TRL's ``SFTTrainer`` + peft, side by side on CPU (issue 23, item 1).

One command (see ``tests/benchmarks/README.md``, "dsum against TRL")::

    nice -n 10 python tests/benchmarks/bench_vs_trl.py [--steps 40] [--repeats 2] [--out results.json]

On the tiny chat LLM of ``python -m dsum.tiny`` (built into a temporary directory unless ``--tiny DIR``), every
training row fine-tunes the same base with the same LoRA (r 16, alpha 32, dropout 0.05, all linear projections, and
trainable embedding and output rows for the data's ``#...#`` masks, as dsum sets them), on the same examples (the
data module's chat prompts of ``data/sample/train.csv``), with the same AdamW (fused), learning rate, cosine
schedule, warmup steps, batch size, number of steps and seed, in fp32 on CPU, each in its own process:

- ``trl/*``: ``SFTTrainer`` with completion-only loss on the pre-tokenized examples: its default (random batches),
  ``group_by_length`` (the transformers 4 spelling), ``train_sampling_strategy="group_by_length"`` (the
  transformers 5 one), ``padding_free=True`` and ``packing=True`` (BFD; one packed row of about ``--batch-size``
  examples per step, so that a step sees as many examples as the other rows). A setting that fails keeps its error
  line in the table. TRL 1.16's fused LM head reads ``lm_head.bias``, which peft's ``TrainableTokensWrapper`` (the
  trainable mask rows of the untied head) lacks, so these rows set it to ``None``; ``trl/as_shipped`` does not, and
  shows the error.
- ``dsum/*``: ``InstructSummarizer`` through ``DsumCLI fit --config configs/quickstart-llm.yaml``: its default
  (length-grouped batches), ``--model.packing=true`` and ``--data.batching=random``.
- ``bare/length_grouped``: the lower bound on framework cost: dsum's own loss on dsum's default batches in a plain
  PyTorch loop (no Lightning, no scheduler, no logging): the fastest any trainer can run this model code on these
  batches.

Per row: training tokens/s (non-padding prompt + summary tokens of the timed steps; the first ``--warmup`` steps
are left out; wall time between step ends, so data loading, the optimizer and callbacks count) and samples/s, the
padding share, peak RSS right after training, then, on the trained weights and by the same functions for every row,
the dev loss per summary token (:func:`dev_loss`) and greedy summaries of ``data/sample/dev.csv``
(:func:`hf_generate`, ``max_new_tokens`` 64) scored with dsum's Mecab ROUGE, with the share of distinct summaries.

Generation (``--gen-repeats``, on the adapter that ``dsum/default`` trained in the first repeat, greedy and 4
beams, ``max_new_tokens`` 64, batch ``--eval-batch-size``): ``gen/dsum_validate`` (``DsumCLI validate``: loss pass,
generation, decoding, ROUGE), ``gen/dsum_generate`` (the module's own ``_generate`` + ``decode`` over its validation
batches, what validation and prediction run to generate) and ``gen/hf_sorted`` (a hand-written loop: the same
prompts sorted longest first, left padding, ``model.generate``, ``batch_decode``), plus ``gen/hf_sorted_merged``
and ``gen/dsum_generate_merged`` (the same loops on the adapter merged into the base: what merging would gain).
``in model forward`` is the share of a loop's time inside the base model's forward: the bound line divides the
HF loop's time by the merged loop's forward time.

Rows run interleaved (A B C ... A B C ...), ``--repeats`` times; the tables show medians. This file is not collected
by pytest (its name does not match ``test_*.py``); ``tests/test_bench_vs_trl.py`` tests its helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRAIN_CSV = REPO / "data" / "sample" / "train.csv"
DEV_CSV = REPO / "data" / "sample" / "dev.csv"
CONFIG = REPO / "configs" / "quickstart-llm.yaml"
CHILD_ENV = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
# configs/quickstart-llm.yaml's optimisation and LoRA, given to every row.
LEARNING_RATE = 1e-2
WARMUP_RATIO = 0.05
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
SEED = 42
MAX_NEW_TOKENS = 64
ENCODER_MAX_LEN, DECODER_MAX_LEN = 512, 64  # the config's data lengths
ROUGE_TOKENIZER = "mecab"

TRL_ROWS: dict[str, dict[str, Any]] = {
    "trl/default": {},
    "trl/group_by_length": {"group_by_length": True},
    "trl/length_grouped": {"train_sampling_strategy": "group_by_length"},
    "trl/padding_free": {"padding_free": True, "max_length": None},
    "trl/packing": {"packing": True},
    "trl/as_shipped": {"as_shipped": True},
}
DSUM_ROWS: dict[str, list[str]] = {
    "dsum/default": [],
    "dsum/packed": ["--model.packing=true"],
    "dsum/random": ["--data.batching=random"],
}
BARE_ROWS = ["bare/length_grouped"]
GEN_ROWS = ["gen/dsum_validate", "gen/dsum_generate", "gen/dsum_generate_merged", "gen/hf_sorted",
            "gen/hf_sorted_merged"]
Example = tuple[list[int], list[int]]


# ================================================================================ shared pieces (tested)
def chat_datamodule(model: str | Path, cache_dir: Path) -> Any:
    """The data module every row's examples come from: ``train.csv`` and ``dev.csv`` in the chat template, with
    the config's lengths, tokenized (``setup("fit")``); its tokenizer has the data's masks added."""
    from dsum.data import DialogueDataModule

    dm = DialogueDataModule(str(model), train_file=str(TRAIN_CSV), val_file=str(DEV_CSV), decoder_only=True,
                            prompt_template="chat", encoder_max_len=ENCODER_MAX_LEN, decoder_max_len=DECODER_MAX_LEN,
                            cache_dir=str(cache_dir))
    dm.setup("fit")
    return dm


def split_examples(dm: Any, split: str) -> list[Example]:
    """``(prompt ids, summary ids)`` of every example of ``split`` (``train`` or ``val``), in file order; the
    summary ends with the end-of-turn token, as dsum trains it."""
    features = dm.splits[split].features
    return [(list(p), list(s)) for p, s in zip(features["input_ids"], features["labels"])]


def trl_rows(examples: Sequence[Example]) -> dict[str, list[list[int]]]:
    """TRL's pre-tokenized form of ``examples``: ``input_ids`` (prompt + summary) and ``completion_mask`` (1 on
    the summary), which ``SFTTrainer`` trains on as is with ``completion_only_loss=True``."""
    return {"input_ids": [p + s for p, s in examples],
            "completion_mask": [[0] * len(p) + [1] * len(s) for p, s in examples]}


def examples_digest(examples: Sequence[Example]) -> str:
    """A short hash of a set of examples (order-independent): rows that trained on the same examples agree."""
    lines = sorted(json.dumps([p, s]) for p, s in examples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def mask_token_ids(tokenizer: Any, base_rows: int) -> list[int]:
    """The token rows dsum trains under LoRA (``InstructSummarizer.new_token_ids``): the data's masks and every
    row added by resizing the embeddings."""
    from dsum.data.text import MASK_PATTERN

    masks = {i for token, i in tokenizer.get_added_vocab().items() if MASK_PATTERN.fullmatch(token)}
    return sorted(masks | set(range(base_rows, len(tokenizer))))


def lora_config(model: Any, token_ids: list[int]) -> Any:
    """The peft config of every row: configs/quickstart-llm.yaml's LoRA, with the ``token_ids`` rows of the input
    embeddings and (untied) output head trainable, as ``InstructSummarizer._lora_config`` builds it."""
    from peft import LoraConfig, TaskType

    names = {id(m): n for n, m in model.named_modules()}
    rows = {names[id(model.get_input_embeddings())]: token_ids}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        rows[names[id(head)]] = token_ids
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=LORA["r"], lora_alpha=LORA["alpha"],
                      lora_dropout=LORA["dropout"], target_modules=LORA["target_modules"], bias="none",
                      trainable_token_indices=rows if token_ids else None)


def warmup_steps(steps: int) -> int:
    """Warmup steps of a ``steps``-step run: ``int(warmup_ratio * steps)``, as dsum's ``configure_optimizers``
    rounds (HF rounds a ratio up, so TRL gets this count as an integer)."""
    return int(WARMUP_RATIO * steps)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of ``batch_size``, longest first (ties in index order): the order of dsum's evaluation
    batches, used for every row's dev loss and generation."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def dev_loss(model: Any, examples: Sequence[Example], pad_id: int, batch_size: int = 32) -> float:
    """Dev loss per summary token: the summed cross-entropy of every summary token (teacher-forced, right
    padding, attention mask), divided by the number of summary tokens, as dsum's ``val/loss``. The model is put in
    eval mode."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in length_sorted_batches([len(p) + len(s) for p, s in examples], batch_size):
            rows = [examples[i] for i in batch]
            width = max(len(p) + len(s) for p, s in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (prompt, summary) in enumerate(rows):
                n = len(prompt) + len(summary)
                ids[r, :n] = torch.tensor(prompt + summary)
                mask[r, :n] = 1
                labels[r, len(prompt) : n] = torch.tensor(summary)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            target = labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total / count


def generation_config(tokenizer: Any, num_beams: int, model_stops: Any = None,
                      max_new_tokens: int = MAX_NEW_TOKENS) -> Any:
    """The decoding settings of every row: greedy (or ``num_beams`` beams, early stopping), no n-gram blocking,
    stopping at the base model's eos ids (``model_stops``: its generation config's ``eos_token_id``), the
    tokenizer's eos and the chat template's end-of-turn token, as dsum's generation config does."""
    from transformers import GenerationConfig

    from dsum.data.prompts import stop_token_ids

    given = [] if model_stops is None else [model_stops] if isinstance(model_stops, int) else list(model_stops)
    stops = list(dict.fromkeys(given + stop_token_ids(tokenizer)))
    kwargs: dict[str, Any] = {"early_stopping": True} if num_beams > 1 else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=stops if len(stops) > 1 else stops[0],
                            **kwargs)


def model_stops(model: Any) -> Any:
    """The eos ids of ``model``'s own generation config (``None`` when it has none)."""
    config = getattr(model, "generation_config", None)
    return getattr(config, "eos_token_id", None)


def hf_generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], batch_size: int, config: Any,
                ) -> list[list[int]]:
    """The hand-written HF loop: prompts sorted longest first, left-padded per batch (``tokenizer.pad``),
    ``model.generate``; returns each prompt's generated ids (continuation only, pads dropped) in input order."""
    import torch

    out: list[list[int]] = [[] for _ in prompts]
    pad = tokenizer.pad_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode():
            for batch in length_sorted_batches([len(p) for p in prompts], batch_size):
                enc = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, return_tensors="pt")
                ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                     generation_config=config)
                for i, row in zip(batch, ids[:, enc["input_ids"].shape[1] :].tolist()):
                    out[i] = [t for t in row if t != pad]
    finally:
        tokenizer.padding_side = side
    return out


def decode_summaries(tokenizer: Any, generated: Sequence[list[int]]) -> list[str]:
    """Generated ids to one-line summaries, as dsum's ``SummarizerBase.decode`` without post-processing: special
    tokens removed except the ``#...#`` masks (which the data module added as special tokens)."""
    import re

    drop = [t for t in tokenizer.all_special_tokens if not re.fullmatch(r"#\w+#", t)]
    texts = []
    for text in tokenizer.batch_decode([list(g) for g in generated], skip_special_tokens=False):
        for token in drop:
            text = text.replace(token, " ")
        texts.append(re.sub(r"\s+", " ", text).strip())
    return texts


def quality(model: Any, tokenizer: Any, dev: Sequence[Example], references: Sequence[Sequence[str]],
            batch_size: int) -> dict[str, Any]:
    """Every row's quality figures on the trained ``model``: dev loss per summary token, Mecab ROUGE of greedy
    summaries (``max_new_tokens`` 64) and the share of distinct summaries."""
    try:
        from dsum.eval.metrics import rouge_scores
    except ImportError:  # before the module moved
        from dsum.metrics import rouge_scores  # type: ignore[no-redef]

    loss = dev_loss(model, dev, tokenizer.pad_token_id, batch_size)
    generated = hf_generate(merged_copy(model), tokenizer, [p for p, _ in dev], batch_size,
                            generation_config(tokenizer, 1, model_stops(model)))
    summaries = decode_summaries(tokenizer, generated)
    scores = rouge_scores(summaries, [list(r) for r in references], tokenizer=ROUGE_TOKENIZER)
    return {"dev_loss": loss, "rouge_mean": scores["rouge_mean"], "distinct": distinct_share(summaries),
            "sample_summaries": summaries[:2]}


def merged_copy(model: Any) -> Any:
    """A copy of ``model`` with its peft adapter merged into the base weights (``model`` itself when it has no
    adapter): the same greedy ids (checked by the generation rows), several times faster on CPU."""
    import copy

    from peft import PeftModel

    return copy.deepcopy(model).merge_and_unload().eval() if isinstance(model, PeftModel) else model


def distinct_share(summaries: Sequence[str]) -> float:
    """The share of distinct summaries (1.0: every dialogue got its own; 1/n: one summary for all)."""
    return len(set(summaries)) / len(summaries) if summaries else 0.0


def trainable_digest(model: Any) -> str:
    """A short hash of the trainable parameters' values (rows that start from the same weights agree)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def throughput(ends: Sequence[float], tokens: Sequence[int], samples: Sequence[int], warmup: int) -> dict[str, Any]:
    """Tokens/s and samples/s of steps ``warmup+1..N``: their tokens (samples) over the wall time from the end
    of step ``warmup`` to the end of step N (``ends``: each step's end time)."""
    if len(ends) <= warmup + 1 or warmup < 1:
        return {"tokens_per_s": None, "samples_per_s": None, "median_step_s": None}
    wall = ends[-1] - ends[warmup - 1]
    steps = [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:])]
    return {"tokens_per_s": sum(tokens[warmup:len(ends)]) / wall, "samples_per_s": sum(samples[warmup:len(ends)]) / wall,
            "median_step_s": statistics.median(steps), "timed_steps": len(ends) - warmup}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ================================================================================ children: training
class StepLog:
    """End time, tokens, samples, padded positions and CPU time of every training step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self.samples: list[int] = []
        self.positions: list[int] = []

    def end_step(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def figures(self, warmup: int) -> dict[str, Any]:
        n = len(self.ends)
        out = throughput(self.ends, self.tokens, self.samples, warmup)
        if out["tokens_per_s"] is not None:
            threads = _threads()
            out["cpu_share"] = (self.cpu[-1] - self.cpu[warmup - 1]) / ((self.ends[-1] - self.ends[warmup - 1]) * threads)
        out["steps"] = n
        out["pad_share"] = 1 - sum(self.tokens[:n]) / max(1, sum(self.positions[:n]))
        out["samples_per_step"] = sum(self.samples[:n]) / max(1, n)
        return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_dsum(model: Path, run_dir: Path, opts: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    import lightning.pytorch as L

    from dsum.cli import DsumCLI

    log = StepLog()
    start: dict[str, str] = {}

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            start["init"] = trainable_digest(pl_module.model)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            log.end_step()
            log.tokens.append(int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum()))
            log.samples.append(len(batch["index"]))
            # Unpacked positions: prompt + summary rows as wide as the longest (packing lays them end to end).
            lengths = batch["attention_mask"].sum(1) + (batch["labels"] != -100).sum(1)
            log.positions.append(int(lengths.max()) * len(lengths))

    args = ["fit", "--config", str(CONFIG), f"--model.pretrained={model}", f"--trainer.default_root_dir={run_dir}",
            f"--data.train_file={TRAIN_CSV}", f"--data.val_file={DEV_CSV}", "--data.predict_file=null",
            "--data.test_file=null", f"--data.cache_dir={run_dir / 'cache'}", "--trainer.logger=false",
            f"--trainer.max_steps={opts.steps}", "--trainer.limit_val_batches=0", "--outputs.export_best=false",
            f"--data.batch_size={opts.batch_size}", "--trainer.enable_progress_bar=false",
            f"--model.learning_rate={LEARNING_RATE}", f"--model.warmup_ratio={WARMUP_RATIO}", f"--seed_everything={SEED}",
            *extra]
    cli = DsumCLI(args=args, extra_callbacks=[Timer()])
    result = {**log.figures(opts.warmup), "peak_rss_mb": peak_rss_mb(), "init": start.get("init")}
    dm = cli.datamodule
    result["train_examples"] = examples_digest(split_examples(dm, "train"))
    if opts.export:
        cli.model.export(opts.export)
    dev = split_examples(dm, "val")
    result["dev_examples"] = examples_digest(dev)
    result.update(quality(cli.model.model, dm.tokenizer, dev, dm.splits["val"].references, opts.eval_batch_size))
    return result


def run_trl(model: Path, run_dir: Path, opts: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(SEED)
    dm = chat_datamodule(model, run_dir / "cache")
    train, tokenizer = split_examples(dm, "train"), dm.tokenizer
    overrides = dict(overrides)
    as_shipped = overrides.pop("as_shipped", False)
    batch_size = opts.batch_size
    if overrides.get("packing"):
        # One packed row per step, about --batch-size examples long, so a step sees as many examples as the others.
        mean = sum(len(p) + len(s) for p, s in train) / len(train)
        overrides.setdefault("max_length", int(round(mean * opts.batch_size)))
        batch_size = 1
    config = SFTConfig(
        output_dir=str(run_dir / "trl"), max_steps=opts.steps, per_device_train_batch_size=batch_size,
        learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=warmup_steps(opts.steps),
        weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch_fused", logging_steps=10**6, save_strategy="no",
        report_to=[], completion_only_loss=True, seed=SEED, data_seed=SEED, dataloader_num_workers=0,
        use_cpu=True, bf16=False, fp16=False, disable_tqdm=True, **overrides,
    )  # a setting transformers/TRL does not know raises here: the row shows the error line
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    base_rows = base.get_input_embeddings().num_embeddings
    if base_rows < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))
    peft_model = get_peft_model(base, lora_config(base, mask_token_ids(tokenizer, base_rows)))
    init = trainable_digest(peft_model)
    head = peft_model.get_output_embeddings()
    if not as_shipped and not hasattr(head, "bias"):
        # TRL 1.16's fused LM head reads ``lm_head.bias``, which peft's TrainableTokensWrapper (the trainable mask
        # rows of the untied head) does not forward: AttributeError at the first step. The head has no bias.
        head.bias = None
    log = StepLog()

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            log.end_step()

    data = Dataset.from_dict(trl_rows(train))
    trainer = SFTTrainer(model=peft_model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[Timer()])
    collate = trainer.data_collator

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        log.tokens.append(sum(len(f["input_ids"]) for f in features))
        log.samples.append(sum(len(f.get("seq_lengths") or [0]) for f in features))
        log.positions.append(int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting  # the dataloader is built in train(); batch i is step i's
    trainer.train()
    result = {**log.figures(opts.warmup), "peak_rss_mb": peak_rss_mb(), "init": init,
              "train_examples": examples_digest(train)}
    dev = split_examples(dm, "val")
    result["dev_examples"] = examples_digest(dev)
    result.update(quality(trainer.model, tokenizer, dev, dm.splits["val"].references, opts.eval_batch_size))
    return result


def run_bare(model: Path, run_dir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """dsum's loss on dsum's default batches in a plain loop: forward, backward, fused AdamW step, zero_grad."""
    import lightning.pytorch as L
    import torch

    from dsum.models import InstructSummarizer
    from dsum.models.instruct import LoraSettings

    L.seed_everything(SEED, verbose=False)
    dm = chat_datamodule(model, run_dir / "cache")
    module = InstructSummarizer(str(model), tokenizer=dm.tokenizer, lora=LoraSettings(**LORA),
                                learning_rate=LEARNING_RATE, weight_decay=0.0)
    init = trainable_digest(module.model)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=LEARNING_RATE, fused=True)
    dm.batch_size = opts.batch_size
    loader = dm.train_dataloader()
    module.train()
    log = StepLog()
    while len(log.ends) < opts.steps:
        for batch in loader:
            loss = module.loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            log.end_step()
            log.tokens.append(int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum()))
            log.samples.append(len(batch["index"]))
            lengths = batch["attention_mask"].sum(1) + (batch["labels"] != -100).sum(1)
            log.positions.append(int(lengths.max()) * len(lengths))
            if len(log.ends) == opts.steps:
                break
    return {**log.figures(opts.warmup), "peak_rss_mb": peak_rss_mb(), "init": init,
            "train_examples": examples_digest(split_examples(dm, "train"))}


# ================================================================================ children: generation
class ForwardTimer:
    """Wall time spent inside ``model``'s forward calls (hooks on the base model: with peft, the adapter layers
    inside it count, the wrapper's Python does not): what every generation loop must pay at least."""

    def __init__(self, model: Any) -> None:
        from peft import PeftModel

        base = model.get_base_model() if isinstance(model, PeftModel) else model
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        self._hooks = [base.register_forward_pre_hook(self._pre), base.register_forward_hook(self._post)]

    def _pre(self, module: Any, args: Any) -> None:
        self._start = time.perf_counter()

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run_generation(row: str, export: Path, run_dir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """One generation row on the exported adapter: wall time of every pass over the dev set (``--num-beams``)."""
    import torch

    beams = opts.num_beams
    dm = chat_datamodule(export, run_dir / "cache")
    cpu_start = time.process_time()
    prompts = [p for p, _ in split_examples(dm, "val")]
    results: dict[str, Any] = {"num_beams": beams, "examples": len(prompts)}
    if row == "gen/dsum_validate":
        import lightning.pytorch as L

        from dsum.cli import DsumCLI

        span: dict[str, float] = {}

        class Span(L.Callback):
            def on_validation_start(self, trainer, pl_module) -> None:
                span["start"] = time.perf_counter()

            def on_validation_end(self, trainer, pl_module) -> None:
                span["end"] = time.perf_counter()

        args = ["validate", "--config", str(CONFIG), f"--model.pretrained={export}",
                f"--trainer.default_root_dir={run_dir}", f"--data.val_file={DEV_CSV}", "--data.train_file=null",
                "--data.test_file=null", "--data.predict_file=null", f"--data.cache_dir={run_dir / 'cache'}",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                f"--data.eval_batch_size={opts.eval_batch_size}", f"--model.generation.num_beams={beams}",
                f"--model.generation.max_new_tokens={MAX_NEW_TOKENS}", "--model.generation.no_repeat_ngram_size=0",
                f"--model.rouge_tokenizer={ROUGE_TOKENIZER}"]
        DsumCLI(args=args, extra_callbacks=[Span()])
        results["seconds"] = span["end"] - span["start"]
    elif row in ("gen/dsum_generate", "gen/dsum_generate_merged"):
        from dsum.models import InstructSummarizer
        from dsum.models.base import GenerationSettings

        module = InstructSummarizer(str(export), tokenizer=dm.tokenizer, generation=GenerationSettings(
            num_beams=beams, no_repeat_ngram_size=0, max_new_tokens=MAX_NEW_TOKENS)).eval()
        timer = ForwardTimer(module.model)
        dm.eval_batch_size = opts.eval_batch_size
        generated: list[list[int]] = [[] for _ in prompts]

        merged = row == "gen/dsum_generate_merged"

        def loop() -> None:
            if merged:  # the change this row measures: generate from the adapter merged into the base, per pass
                module.model.merge_adapter()
            try:
                with torch.inference_mode():
                    for batch in dm.val_dataloader():
                        ids = module._generate(batch)
                        module.decode(ids)
                        for i, row_ids in zip(batch["index"].tolist(), ids.tolist()):
                            generated[i] = [t for t in row_ids if t != dm.tokenizer.pad_token_id]
            finally:
                if merged:
                    module.model.unmerge_adapter()

        _, results["seconds"] = _timed(loop)
        results["ids_digest"] = hashlib.sha256(json.dumps(generated).encode()).hexdigest()[:12]
        results["generated"] = generated
    else:  # the hand-written HF loop, on the adapter as peft loads it, or merged into the base
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base_dir = json.loads((export / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        base.resize_token_embeddings(len(dm.tokenizer))
        model = PeftModel.from_pretrained(base, str(export)).eval()
        if row == "gen/hf_sorted_merged":
            model = model.merge_and_unload()
        config = generation_config(dm.tokenizer, beams, model_stops(base))
        timer = ForwardTimer(model)
        generated, results["seconds"] = _timed(
            lambda: hf_generate(model, dm.tokenizer, prompts, opts.eval_batch_size, config))
        decode_summaries(dm.tokenizer, generated)
        results["ids_digest"] = hashlib.sha256(json.dumps(generated).encode()).hexdigest()[:12]
        results["generated"] = generated
    if row != "gen/dsum_validate":
        results["forward_s"], results["forward_calls"] = timer.seconds, timer.calls
        results["forward_share"] = timer.seconds / results["seconds"]
    results["summaries_per_s"] = len(prompts) / results["seconds"]
    results["cpu_s"] = time.process_time() - cpu_start
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def child(opts: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(opts.threads)
    model, run_dir = Path(opts.model), Path(opts.run_dir)
    row = opts.row
    if row in TRL_ROWS:
        result = run_trl(model, run_dir, opts, TRL_ROWS[row])
    elif row in DSUM_ROWS:
        result = run_dsum(model, run_dir, opts, DSUM_ROWS[row])
    elif row in BARE_ROWS:
        result = run_bare(model, run_dir, opts)
    else:
        result = run_generation(row, model, run_dir, opts)
    print("RESULT " + json.dumps(result))


# ================================================================================ parent
def run_row(row: str, model: Path, run_dir: Path, opts: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run one row in its own process; its result, or its error's last line."""
    cmd = [sys.executable, __file__, "--child", "--row", row, "--model", str(model), "--run-dir", str(run_dir),
           "--steps", str(opts.steps), "--batch-size", str(opts.batch_size), "--warmup", str(opts.warmup),
           "--eval-batch-size", str(opts.eval_batch_size), "--threads", str(opts.threads), *extra]
    threads = {name: str(opts.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **CHILD_ENV, **threads}, capture_output=True, text=True,
                          check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"row": row, "process_s": time.perf_counter() - started, **json.loads(line[len("RESULT "):])}
    return {"row": row, "error": error_line(done.stderr or done.stdout)}


def error_line(text: str) -> str:
    """The last line of a child's output that names an error (else its last line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def summarize(runs: dict[str, list[dict[str, Any]]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per row: the median of each numeric ``keys`` over its runs, its runs' figures, and its error if every run
    failed."""
    out: dict[str, dict[str, Any]] = {}
    for row, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            out[row] = {"error": results[0]["error"] if results else "not run"}
            continue
        out[row] = {key: median_of(ok, key) for key in keys}
        out[row]["runs"] = len(ok)
        for key in ("init", "train_examples", "dev_examples", "ids_digest"):
            values = {r.get(key) for r in ok if r.get(key)}
            if values:
                out[row][key] = ",".join(sorted(values))
    return out


def best_row(summary: dict[str, dict[str, Any]], prefix: str, key: str = "tokens_per_s") -> str | None:
    """The row of ``prefix`` with the highest median ``key`` (rows that failed are skipped)."""
    rows = [(s[key], r) for r, s in summary.items() if r.startswith(prefix) and s.get(key)]
    return max(rows)[1] if rows else None


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(share: float | None, digits: int = 0) -> str:
    return "-" if share is None else f"{100 * share:.{digits}f}%"


def training_table(summary: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| row | tokens/s | samples/s | ex/step | pad | cpu | peak RSS MB | dev loss | ROUGE (Mecab) | distinct | "
             "tokens/s per run |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row, s in summary.items():
        if "error" in s:
            lines.append(f"| {row} | failed: {s['error'][:160]} |||||||||")
            continue
        per_run = ", ".join(_cell(r.get("tokens_per_s"), 0) for r in runs[row] if "error" not in r)
        lines.append(
            f"| {row} | {_cell(s['tokens_per_s'], 0)} | {_cell(s['samples_per_s'])} | {_cell(s['samples_per_step'])} | "
            f"{_pct(s['pad_share'], 1)} | {_pct(s.get('cpu_share'))} | "
            f"{_cell(s['peak_rss_mb'], 0)} | {_cell(s.get('dev_loss'), 4)} | {_cell(s.get('rouge_mean'), 2)} | "
            f"{_cell(s.get('distinct'), 2)} | {per_run} |")
    return "\n".join(lines)


def generation_table(summary: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| row | beams | summaries/s | seconds | in model forward | peak RSS MB | ids | seconds per run |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for row, s in summary.items():
        if "error" in s:
            lines.append(f"| {row} | failed: {s['error'][:160]} ||||||")
            continue
        per_run = ", ".join(_cell(r.get("seconds"), 2) for r in runs[row] if "error" not in r)
        share = s.get("forward_share")
        lines.append(f"| {row} | {_cell(s['num_beams'], 0)} | {_cell(s['summaries_per_s'], 2)} | "
                     f"{_cell(s['seconds'], 2)} | {_pct(share)} | "
                     f"{_cell(s['peak_rss_mb'], 0)} | {s.get('ids_digest', '-')} | {per_run} |")
    return "\n".join(lines)


def same_outputs(a: Sequence[list[int]], b: Sequence[list[int]]) -> int:
    """How many examples got the same generated ids from two loops."""
    return sum(x == y for x, y in zip(a, b))


def interleave(rows: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """``(repeat, row)`` in run order: every row once per repeat, rows in the same order each time."""
    return [(r, row) for r in range(repeats) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timings")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=32, help="dev loss and generation batch")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of every row")
    parser.add_argument("--gen-repeats", type=int, default=2, help="interleaved runs of every generation row")
    parser.add_argument("--rows", default=",".join([*TRL_ROWS, *DSUM_ROWS, *BARE_ROWS]),
                        help="training rows, comma-separated")
    parser.add_argument("--gen-rows", default=",".join(GEN_ROWS), help="generation rows; empty: none")
    parser.add_argument("--beams", default="1,4", help="beam widths of the generation rows")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per row (1: on a shared machine, a descheduled second thread stalls "
                             "every parallel op of a tiny model)")
    parser.add_argument("--tiny", default=None, help="tiny chat LLM directory (default: built into a temp dir)")
    parser.add_argument("--out", default=None, help="write every figure as JSON here")
    parser.add_argument("--adapter", default=None,
                        help="generation rows on this dsum adapter export (default: the one dsum/default trains)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--export", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--num-beams", type=int, default=1, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts)
        return
    rows = [r for r in opts.rows.split(",") if r]
    gen_rows = [r for r in opts.gen_rows.split(",") if r]
    unknown = [r for r in [*rows, *gen_rows] if r not in {*TRL_ROWS, *DSUM_ROWS, *BARE_ROWS, *GEN_ROWS}]
    if unknown:
        raise SystemExit(f"bench_vs_trl: unknown rows {unknown}; known: {[*TRL_ROWS, *DSUM_ROWS, *BARE_ROWS, *GEN_ROWS]}")
    beams = [int(b) for b in opts.beams.split(",") if b]

    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        work = Path(tmp)
        if opts.tiny:
            tiny = Path(opts.tiny)
        else:
            from dsum.tiny.llm import build_tiny_llm

            tiny = build_tiny_llm(work / "tiny_llm", TRAIN_CSV)
        export = Path(opts.adapter) if opts.adapter else work / "export"
        runs: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
        for repeat, row in interleave(rows, opts.repeats):
            extra = (["--export", str(export)] if row == "dsum/default" and repeat == 0 and gen_rows
                     and not opts.adapter else [])
            result = run_row(row, tiny, work / f"{row.replace('/', '_')}_{repeat}", opts, *extra)
            print(f"[train {repeat}] {row}: " + (result.get("error") or
                  f"{_cell(result.get('tokens_per_s'), 0)} tokens/s, dev loss {_cell(result.get('dev_loss'), 4)}"),
                  flush=True)
            runs[row].append(result)
        keys = ["tokens_per_s", "samples_per_s", "median_step_s", "samples_per_step", "pad_share", "cpu_share",
                "peak_rss_mb", "dev_loss", "rouge_mean", "distinct"]
        train_summary = summarize(runs, keys)

        gen_runs: dict[str, list[dict[str, Any]]] = {}
        if gen_rows and export.is_dir():
            for beam in beams:
                names = [f"{row}@{beam}" for row in gen_rows]
                for name in names:
                    gen_runs[name] = []
                for repeat, name in interleave(names, opts.gen_repeats):
                    row = name.split("@")[0]
                    result = run_row(row, export, work / f"gen_{repeat}", opts, "--num-beams", str(beam))
                    print(f"[gen {repeat}] {name}: " + (result.get("error") or
                          f"{_cell(result.get('summaries_per_s'), 2)} summaries/s"), flush=True)
                    gen_runs[name].append(result)
        gen_summary = summarize(gen_runs, ["num_beams", "summaries_per_s", "seconds", "peak_rss_mb", "forward_s",
                                           "forward_share"])

    print()
    print(training_table(train_summary, runs))
    for key in ("init", "train_examples", "dev_examples"):
        values = {s.get(key) for s in train_summary.values() if "error" not in s and s.get(key)}
        print(f"{key}: {'the same for every row' if len(values) == 1 else 'DIFFERENT: ' + str(values)}")
    ratios = ratio_lines(train_summary, gen_summary, gen_runs, beams)
    if gen_summary:
        print()
        print(generation_table(gen_summary, gen_runs))
    print()
    print("\n".join(ratios))
    if opts.out:
        Path(opts.out).write_text(json.dumps({"training": runs, "training_medians": train_summary,
                                              "generation": _strip_ids(gen_runs), "generation_medians": gen_summary,
                                              "ratios": ratios, "options": vars(opts)}, indent=2) + "\n",
                                  encoding="utf-8")


def _strip_ids(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {row: [{k: v for k, v in r.items() if k != "generated"} for r in rs] for row, rs in runs.items()}


def ratio_lines(train: dict[str, dict[str, Any]], gen: dict[str, dict[str, Any]],
                gen_runs: dict[str, list[dict[str, Any]]], beams: Sequence[int]) -> list[str]:
    """The goal lines: dsum's best training row against TRL's best (tokens/s, dev loss), dsum's default against
    TRL's best, the bare-loop bound, and each generation row against the sorted HF loop."""
    lines = []
    trl, dsum = best_row(train, "trl/"), best_row(train, "dsum/")
    if trl and dsum:
        for name in dict.fromkeys([dsum, "dsum/default"]):
            if train.get(name, {}).get("tokens_per_s"):
                lines.append(f"training {name}/{trl} (TRL's best) = {train[name]['tokens_per_s'] / train[trl]['tokens_per_s']:.2f}x "
                             f"tokens/s; dev loss {_cell(train[name].get('dev_loss'), 4)} vs "
                             f"{_cell(train[trl].get('dev_loss'), 4)}")
        bare = train.get("bare/length_grouped", {}).get("tokens_per_s")
        if bare:
            lines.append(f"bound: bare loop/{trl} = {bare / train[trl]['tokens_per_s']:.2f}x, "
                         f"bare loop/dsum/default = {bare / train['dsum/default']['tokens_per_s']:.2f}x"
                         if train.get("dsum/default", {}).get("tokens_per_s") else f"bound: bare loop/{trl} = "
                         f"{bare / train[trl]['tokens_per_s']:.2f}x")
    for beam in beams:
        hf = gen.get(f"gen/hf_sorted@{beam}", {}).get("summaries_per_s")
        if not hf:
            continue
        for row in ("gen/dsum_generate", "gen/dsum_generate_merged", "gen/dsum_validate", "gen/hf_sorted_merged"):
            value = gen.get(f"{row}@{beam}", {}).get("summaries_per_s")
            if value:
                lines.append(f"generation beams {beam}: {row}/gen/hf_sorted = {value / hf:.2f}x")
        merged_forward = gen.get(f"gen/hf_sorted_merged@{beam}", {}).get("forward_s")
        if merged_forward:
            lines.append(f"generation beams {beam}: bound (merged weights, no time outside the model's forward) = "
                         f"{gen[f'gen/hf_sorted@{beam}']['seconds'] / merged_forward:.2f}x the sorted HF loop")
        a = [r["generated"] for r in gen_runs.get(f"gen/dsum_generate@{beam}", []) if "generated" in r]
        b = [r["generated"] for r in gen_runs.get(f"gen/hf_sorted@{beam}", []) if "generated" in r]
        c = [r["generated"] for r in gen_runs.get(f"gen/hf_sorted_merged@{beam}", []) if "generated" in r]
        d = [r["generated"] for r in gen_runs.get(f"gen/dsum_generate_merged@{beam}", []) if "generated" in r]
        if a and b:
            lines.append(f"generation beams {beam}: same ids dsum vs HF sorted: {same_outputs(a[0], b[0])}/{len(a[0])}"
                         + (f"; HF merged vs HF: {same_outputs(c[0], b[0])}/{len(b[0])}" if c else "")
                         + (f"; dsum merged vs dsum: {same_outputs(d[0], a[0])}/{len(a[0])}" if d else ""))
    return lines


if __name__ == "__main__":
    main()
