"""Does the batching order cost quality? Dev ROUGE after the same number of steps for ``random``,
``length_grouped`` and ``token_budget`` batching, over several seeds, with a tiny BART on the bundled sample.

    nice -n 10 python tests/benchmarks/bench_batching_quality.py [--seeds 0 1 2] [--jobs 3] [--out results.json]

Every run starts from the same tiny BART (built once, seeded), trains ``--steps`` optimizer steps with the same
optimiser and schedule, then greedily summarises the whole dev set. ``token_budget`` gets the smallest
``max_tokens`` that gives no more batches per epoch than ``batch_size`` does, so every mode sees about the same
examples per step. The seed changes the batch order and the dropout masks.

Each row reports whether the summaries depend on the input: ``distinct`` (different summaries among the dev
examples) and the margin over the best constant summary (the one train summary that, given for every dev
dialogue, scores highest). A mode that wins only by a constant output says nothing about batching.

Not part of the test suite (pytest collects ``test_*.py`` only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "data" / "sample"
MODES = ("random", "length_grouped", "token_budget")
ENCODER_MAX_LEN, DECODER_MAX_LEN = 384, 64


def build_model(train_csv: Path, out: Path, d_model: int, layers: int) -> str:
    """A seeded random tiny BART with a tokenizer trained on ``train_csv``."""
    from transformers.utils import logging as hf_logging

    from dsum.tiny.build import build_tiny_model

    hf_logging.disable_progress_bar()
    return str(build_tiny_model("bart", out, [train_csv], d_model=d_model, layers=layers, seed=0))


def datamodule(opts: argparse.Namespace, model: str, mode: str, seed: int, max_tokens: int | None = None):
    from dsum.data import DialogueDataModule

    return DialogueDataModule(
        tokenizer_name=model, train_file=str(opts.train), val_file=str(opts.dev), predict_file=str(opts.dev),
        batch_size=opts.batch_size, eval_batch_size=64, batching=mode, max_tokens=max_tokens,
        length_noise=opts.length_noise,
        encoder_max_len=ENCODER_MAX_LEN, decoder_max_len=DECODER_MAX_LEN, cache_dir=str(opts.cache_dir), seed=seed,
    )


def token_budget(opts: argparse.Namespace, model: str) -> int:
    """The smallest ``max_tokens`` whose token-budget epoch has no more batches than ``batch_size`` gives."""
    from dsum.data.batching import DialogueBatchSampler

    dm = datamodule(opts, model, "length_grouped", 0)
    dm.setup("fit")
    features = dm.splits["train"].features
    src, tgt = features["source_length"], features["target_length"]
    target = math.ceil(len(src) / opts.batch_size)

    def batches(max_tokens: int) -> int:
        return len(DialogueBatchSampler(src, tgt, mode="token_budget", max_tokens=max_tokens, length_noise=opts.length_noise))

    low = high = ENCODER_MAX_LEN + DECODER_MAX_LEN
    while batches(high) > target:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if batches(middle) <= target else (middle + 1, high)
    return high


def best_constant(references: list[list[str]], candidates: list[str], tokenizer: str) -> tuple[float, str]:
    """The highest dev ROUGE mean any single candidate summary gets when given for every example."""
    from dsum.eval.metrics import rouge_scores

    best = max(((rouge_scores([c] * len(references), references, tokenizer)["rouge_mean"], c)
                for c in dict.fromkeys(candidates)), key=lambda pair: pair[0])
    return float(best[0]), best[1]


def dev_loss(summarizer, dm) -> float:
    """Teacher-forced cross-entropy per summary token on the whole dev set: a far less noisy signal than ROUGE on
    60 dialogues."""
    import torch

    summarizer.eval()
    total = tokens = 0.0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            totals, counts = summarizer.example_losses(batch)
            total += float(totals.sum())
            tokens += float(counts.sum())
    return total / tokens


def normalize_by_mean_batch_tokens(summarizer, dm, batch_size: int) -> None:
    """Experiment: divide each batch's summed token loss by the mean summary tokens per batch over the epoch,
    not by this batch's own count, so every summary token weighs the same whatever batch it lands in (as it
    does on average with random batches)."""
    from dsum.data.datamodule import column

    dm.setup("fit")
    lengths = column(dm.splits["train"].features, "target_length")
    normalizer = float(lengths.sum()) / math.ceil(len(lengths) / batch_size)

    def loss(batch):
        totals, _ = summarizer.example_losses(batch)
        return totals.sum() / normalizer

    summarizer.loss = loss


def train_and_score(opts: argparse.Namespace, model: str, mode: str, seed: int, max_tokens: int | None) -> dict[str, Any]:
    import lightning.pytorch as L

    from dsum.eval.metrics import rouge_scores
    from dsum.models import Seq2SeqSummarizer
    from dsum.models.base import GenerationSettings

    L.seed_everything(seed, verbose=False)
    dm = datamodule(opts, model, mode, seed, max_tokens)
    summarizer = Seq2SeqSummarizer(
        pretrained=model, tokenizer=dm.tokenizer, learning_rate=opts.lr, weight_decay=0.0, warmup_ratio=0.05,
        lr_scheduler="cosine", generation=GenerationSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=DECODER_MAX_LEN),
        rouge_tokenizer=opts.rouge_tokenizer,
    )
    if opts.loss_normalizer == "mean_batch_tokens":
        normalize_by_mean_batch_tokens(summarizer, dm, opts.batch_size)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=opts.steps, max_epochs=-1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, precision="32-true",
    )
    losses: list[float] = []

    class LossLog(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            losses.append(float(outputs["loss"]))
            if trainer.global_step % 250 == 0:
                print(f"{mode} seed {seed}: step {trainer.global_step}, train/loss {losses[-1]:.3f}", flush=True)

    trainer.callbacks.append(LossLog())
    start = time.perf_counter()
    trainer.fit(summarizer, datamodule=dm)
    fit_seconds = time.perf_counter() - start
    loss_on_dev = dev_loss(summarizer, dm)
    rows = sorted(row for batch in trainer.predict(summarizer, datamodule=dm) for row in batch)
    predictions = [summary for _, _, summary in rows]
    references = dm.splits["val"].references
    scores = rouge_scores(predictions, references, opts.rouge_tokenizer)
    return {
        "mode": mode, "seed": seed, "steps": trainer.global_step, "max_tokens": max_tokens,
        "rouge_mean": scores["rouge_mean"], **{k: scores[k] for k in ("rouge1", "rouge2", "rougeL")},
        "dev_loss": loss_on_dev,
        "distinct": len(set(predictions)), "examples": len(predictions),
        "train_loss": statistics.fmean(losses[-20:]),  # mean of the last 20 steps
        "fit_seconds": round(fit_seconds, 1), "example_predictions": predictions[:3],
    }


def summarize(runs: list[dict[str, Any]], constant: float) -> dict[str, dict[str, Any]]:
    table = {}
    for mode in MODES:
        scores = [r["rouge_mean"] for r in runs if r["mode"] == mode]
        if not scores:
            continue
        losses = [r["dev_loss"] for r in runs if r["mode"] == mode]
        table[mode] = {
            "dev_loss_mean": statistics.fmean(losses), "dev_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "min": min(scores), "max": max(scores), "seeds": len(scores),
            "min_distinct": min(r["distinct"] for r in runs if r["mode"] == mode),
            "margin_over_constant": statistics.fmean(scores) - constant,
        }
    return table


def print_report(opts: argparse.Namespace, runs: list[dict[str, Any]], table: dict[str, dict[str, Any]],
                 constant: float, constant_text: str, max_tokens: int) -> None:
    examples = runs[0]["examples"]
    print(f"\ntiny BART d_model={opts.d_model} layers={opts.layers}, {opts.steps} steps, batch_size={opts.batch_size} "
          f"(token_budget max_tokens={max_tokens}, length_noise={opts.length_noise}, "
          f"group window {opts.group_window_batches or 50} batches, loss / {opts.loss_normalizer}), lr={opts.lr}, dev={opts.dev.name} ({examples} examples), "
          f"ROUGE={opts.rouge_tokenizer}")
    print(f"best constant summary: rouge_mean {constant:.2f} ({constant_text[:60]!r})\n")
    print("| mode | seeds | dev rouge_mean, mean ± std | min – max | over best constant | distinct summaries (min) "
          "| dev loss, mean ± std |")
    print("|---|---|---|---|---|---|---|")
    for mode, row in table.items():
        print(f"| `{mode}` | {row['seeds']} | {row['mean']:.2f} ± {row['std']:.2f} | {row['min']:.2f} – {row['max']:.2f} "
              f"| {row['margin_over_constant']:+.2f} | {row['min_distinct']}/{examples} "
              f"| {row['dev_loss_mean']:.4f} ± {row['dev_loss_std']:.4f} |")
    print("\nper run:")
    for run in runs:
        print(f"  {run['mode']:<15} seed {run['seed']}: rouge_mean {run['rouge_mean']:.2f}, distinct "
              f"{run['distinct']}/{run['examples']}, dev loss {run['dev_loss']:.4f}, train/loss {run['train_loss']:.3f}, "
              f"fit {run['fit_seconds']}s")
    if "random" in table:
        base = table["random"]
        for mode in ("length_grouped", "token_budget"):
            if mode in table:
                row = table[mode]
                for name, key, higher_is_better, digits in (("rouge_mean", "", True, 2), ("dev loss", "dev_loss_", False, 4)):
                    noise = math.sqrt(base[key + "std"] ** 2 / base["seeds"] + row[key + "std"] ** 2 / row["seeds"])
                    diff = row[key + "mean"] - base[key + "mean"]
                    better = diff > 0 if higher_is_better else diff < 0
                    verdict = "within noise" if abs(diff) <= 2 * noise else ("better" if better else "WORSE")
                    print(f"{mode} - random, {name}: {diff:+.{digits}f} (2 x standard error {2 * noise:.{digits}f}): {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (default 1000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="peak learning rate (default 1e-3; at 3e-3 the tiny BART collapses to one summary)")
    parser.add_argument("--d-model", type=int, default=64, help="tiny BART hidden size (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="tiny BART encoder and decoder layers (default 2)")
    parser.add_argument("--train", type=Path, default=SAMPLE / "train.csv")
    parser.add_argument("--dev", type=Path, default=SAMPLE / "dev.csv")
    parser.add_argument("--length-noise", type=float, default=None,
                        help="data.length_noise for length_grouped and token_budget (default: dsum's default)")
    parser.add_argument("--group-window-batches", type=int, default=None,
                        help="experiment: length_grouped sorts within windows of this many batches "
                             "(dsum.data.batching.GROUP_WINDOW_BATCHES, default 50)")
    parser.add_argument("--loss-normalizer", choices=("batch_tokens", "mean_batch_tokens"), default="batch_tokens",
                        help="experiment: divide a batch's token loss by its own summary tokens (dsum) or by the "
                             "mean summary tokens per batch")
    parser.add_argument("--rouge-tokenizer", choices=("mecab", "kiwi", "whitespace"), default="mecab",
                        help="ROUGE tokenizer for dev scores and the best constant (default mecab, dsum's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1; 0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each (default 1)")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    return parser.parse_args(argv)


def run_seeds_in_parallel(opts: argparse.Namespace, argv: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train each seed in its own process, ``--jobs`` at a time; their runs and shared settings."""
    base = list(argv)
    outputs, procs = [], []
    with tempfile.TemporaryDirectory(prefix="dsum-batching-jobs-") as tmp:
        pending = list(opts.seeds)
        while pending or procs:
            while pending and len(procs) < opts.jobs:
                seed = pending.pop(0)
                out = Path(tmp) / f"seed{seed}.json"
                cmd = [sys.executable, __file__, *base, "--seeds", str(seed), "--jobs", "1", "--out", str(out)]
                log = out.with_suffix(".log")
                with log.open("w") as sink:
                    procs.append(subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT))
                print(f"seed {seed}: started", flush=True)
                outputs.append(out)
            time.sleep(1)
            for proc in [p for p in procs if p.poll() is not None]:
                if proc.returncode:
                    log = Path(proc.args[-1]).with_suffix(".log")
                    raise SystemExit(f"a seed's run failed: {proc.args}\n{log.read_text()[-3000:]}")
                print(f"{Path(proc.args[-1]).stem}: done", flush=True)
                procs.remove(proc)
        results = [json.loads(out.read_text()) for out in outputs]
    return [run for result in results for run in result["runs"]], results[0]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    if opts.length_noise is None:
        from dsum.data.batching import LENGTH_NOISE

        opts.length_noise = LENGTH_NOISE
    if opts.group_window_batches is not None:
        import dsum.data.batching

        dsum.data.batching.GROUP_WINDOW_BATCHES = opts.group_window_batches
    if opts.jobs > 1 and len(opts.seeds) > 1:
        # The children get the same options but one seed each and no --out/--seeds/--jobs of ours.
        child_argv = _without(argv, {"--seeds", "--jobs", "--out"})
        runs, first = run_seeds_in_parallel(opts, child_argv)
        constant, constant_text = first["best_constant"]["rouge_mean"], first["best_constant"]["summary"]
        finish(opts, runs, constant, constant_text, first["max_tokens"])
        return
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dsum-batching-") as tmp:
        opts.cache_dir = Path(tmp) / "cache"
        model = build_model(opts.train, Path(tmp) / "bart", opts.d_model, opts.layers)
        max_tokens = token_budget(opts, model)
        probe = datamodule(opts, model, "random", 0)
        constant, constant_text = best_constant(probe.splits["val"].references,
                                                [refs[0] for refs in probe.splits["train"].references],
                                                opts.rouge_tokenizer)
        runs = []
        for seed in opts.seeds:
            for mode in opts.modes:
                runs.append(train_and_score(opts, model, mode, seed, max_tokens if mode == "token_budget" else None))
                print(f"{mode} seed {seed}: rouge_mean {runs[-1]['rouge_mean']:.2f}, "
                      f"distinct {runs[-1]['distinct']}/{runs[-1]['examples']}, fit {runs[-1]['fit_seconds']}s", flush=True)
    finish(opts, runs, constant, constant_text, max_tokens)


def _without(argv: list[str], options: set[str]) -> list[str]:
    """``argv`` without the given options and their values (``--opt v [v ...]`` or ``--opt=v``)."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=", 1)[0] in options
            if skipping:
                continue
        elif skipping:
            continue
        out.append(arg)
    return out


def finish(opts: argparse.Namespace, runs: list[dict[str, Any]], constant: float, constant_text: str,
           max_tokens: int) -> None:
    table = summarize(runs, constant)
    print_report(opts, runs, table, constant, constant_text, max_tokens)
    if opts.out:
        opts.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(opts).items()}, "max_tokens": max_tokens,
                                        "best_constant": {"rouge_mean": constant, "summary": constant_text},
                                        "table": table, "runs": runs}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
