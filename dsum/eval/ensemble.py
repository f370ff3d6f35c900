"""Ensembling by minimum Bayes risk: ``python -m dsum.eval.ensemble SOURCE SOURCE SOURCE ... --out ensemble.csv``.

A source is a submission CSV (``fname,summary``, the sample layout's unnamed index column allowed) or an
exported model directory (``best_model/`` of a run, any family), first run through ``main.py predict`` in its own
process on ``--data``, with the settings the export carries (``dsum_inference.json``), or ``--config``, or for an
older export the run's ``config.yaml`` beside it. For every dialogue the ensemble keeps the candidate with the
highest mean ``rouge_mean`` against the other sources' candidates: the summary the others agree with most. Ties go
to the source listed first.

Output: the submission in the sample layout and one JSON report on stdout (also written to ``--report``): how often
each source won and, with ``--gold``, each source's score and the ensemble's, as ``dsum.eval.score`` computes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jsonargparse import ArgumentParser

from dsum.data.io import DataError, read_dialogue_csv
from dsum.eval.metrics import REFERENCE_RULES, RougeCalculator, metric_settings, rouge_scores
from dsum.eval.score import ScoreError, read_gold, read_predictions
from dsum.eval.tokenizers import DEFAULT_TOKENIZER, TOKENIZERS
from dsum.infra.files import atomic_write_json, atomic_write_text
from dsum.infra.log import every_rank

MAIN = Path(__file__).resolve().parents[2] / "main.py"
MIN_SOURCES = 3
# The end of `read_dialogue_csv`'s message about bad rows, which names a training setting.
_SKIP_ROWS_HINT = "Fix these rows, or set data.on_bad_rows=skip to drop them (the count dropped is logged)."


class EnsembleError(ValueError):
    """Sources that cannot be ensembled; the message names the source."""


@dataclass
class Source:
    """One ensemble member: where it came from and its summary per ``fname``."""

    name: str
    summaries: dict[str, str]


def is_model_dir(path: Path) -> bool:
    """An exported Hugging Face model (or adapter) directory."""
    return path.is_dir() and any((path / name).is_file() for name in ("config.json", "adapter_config.json"))


def predict_with_model(model_dir: Path, data: Path, out_csv: Path, config: Path | None, work_dir: Path) -> Path:
    """Write ``model_dir``'s summaries of ``data`` to ``out_csv`` with ``main.py predict`` in a subprocess, run in
    ``work_dir``, with ``config``, else the export's own settings (``dsum_inference.json``), else the ``config.yaml``
    of the run that holds ``model_dir``."""
    from dsum.eval.inference_settings import predict_args, saved_inference_settings  # dsum.models loads torch

    model_dir, data, out_csv, work_dir = (p.resolve() for p in (model_dir, data, out_csv, work_dir))
    try:
        saved = saved_inference_settings(model_dir)
    except ValueError as error:
        raise EnsembleError(str(error)) from None
    if config is None and saved and saved.get("model_class"):
        setup = predict_args(saved)  # the export carries its family, data layout and inference settings
    else:  # an export from before dsum_inference.json: its run's config.yaml
        config = (config or model_dir.parent / "config.yaml").resolve()
        if not config.is_file():
            raise EnsembleError(f"{model_dir}: no config for predict (looked for {config}); pass --config with the "
                                "model's family config.")
        setup = ["--config", str(config)]
    if not MAIN.is_file():
        raise EnsembleError(f"{model_dir}: cannot run a model without {MAIN}; predict it yourself and pass the CSV.")
    command = [
        sys.executable, str(MAIN), "predict", *setup,
        f"--model.pretrained={model_dir}", f"--data.predict_file={data}", f"--submission.path={out_csv}",
        f"--trainer.default_root_dir={work_dir}", "--trainer.logger=false",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=MAIN.parent)
    if done.returncode != 0 or not out_csv.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise EnsembleError(f"{model_dir}: main.py predict failed (exit {done.returncode}):\n{tail}")
    return out_csv


def load_sources(paths: Sequence[Path], data: Path | None, config: Path | None, work_dir: Path) -> list[Source]:
    """Every source's summaries, predicting with model directories first; all must cover the same fnames."""
    sources = []
    for i, path in enumerate(paths):
        if is_model_dir(path):
            if data is None:
                raise EnsembleError(f"{path}: a model directory needs --data (the CSV of dialogues to summarize).")
            csv = predict_with_model(path, data, work_dir / f"source{i}.csv", config, work_dir / f"source{i}")
        elif path.is_file():
            csv = path
        else:
            raise EnsembleError(f"{path}: neither a submission CSV nor an exported model directory (no config.json).")
        try:
            summaries = read_predictions(csv)
        except ScoreError as err:
            raise EnsembleError(str(err)) from None
        sources.append(Source(str(path), summaries))
    first = sources[0]
    for source in sources[1:]:
        missing = [f for f in first.summaries if f not in source.summaries]
        extra = [f for f in source.summaries if f not in first.summaries]
        if missing or extra:
            raise EnsembleError(
                f"{source.name}: fnames differ from {first.name} ({len(missing)} missing, e.g. {missing[:3]}; "
                f"{len(extra)} extra, e.g. {extra[:3]})."
            )
    return sources


def mbr_choose(candidates: Sequence[str], calculator: RougeCalculator) -> tuple[int, np.ndarray]:
    """Index of the candidate with the highest mean ``rouge_mean`` against the others (ties: the lowest index), and
    every candidate's mean. F1 is symmetric, so each pair is scored once."""
    k = len(candidates)
    agreement = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            agreement[i, j] = agreement[j, i] = calculator.pair(candidates[i], candidates[j]).mean()
    support = agreement.sum(axis=1) / (k - 1)
    return int(np.argmax(support)), support


def ensemble(
    sources: Sequence[Source], tokenizer: str = DEFAULT_TOKENIZER, order: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[int]]:
    """The MBR choice per fname (``fname,summary`` rows, in ``order`` or the first source's order) and, per
    source, how many rows it won."""
    _check_count(len(sources))
    fnames = list(order) if order is not None else list(sources[0].summaries)
    calculator = RougeCalculator(tokenizer)
    wins = [0] * len(sources)
    rows = []
    for fname in fnames:
        if fname not in sources[0].summaries:
            raise EnsembleError(f"{sources[0].name}: no summary for {fname!r}.")
        best, _ = mbr_choose([s.summaries[fname] for s in sources], calculator)
        wins[best] += 1
        rows.append((fname, sources[best].summaries[fname]))
    return pd.DataFrame(rows, columns=["fname", "summary"]), wins


def _check_count(count: int) -> None:
    if count < MIN_SOURCES:
        raise EnsembleError(
            f"MBR needs at least {MIN_SOURCES} sources (got {count}): with two, both agree equally with each other."
        )


def read_fname_order(path: Path) -> list[str]:
    """The fnames of a dialogue CSV (``fname,dialogue``), in file order, read as ``predict`` reads it; an
    ``EnsembleError`` names the file and its bad rows."""
    try:
        return read_dialogue_csv(path, labelled=False).fnames
    except DataError as err:
        # The reader's hint is for training configs; the ensemble has no setting to skip rows.
        raise EnsembleError(str(err).replace(_SKIP_ROWS_HINT, "Fix these rows of --data.")) from None


def run(
    paths: Sequence[Path],
    out: Path,
    gold: Path | None = None,
    data: Path | None = None,
    config: Path | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
    references: str = "mean",
    report: Path | None = None,
) -> dict[str, Any]:
    """Ensemble ``paths`` into ``out`` and return the report (see the module docstring)."""
    settings = metric_settings(tokenizer, references)
    _check_count(len(paths))  # before any model runs
    order = read_fname_order(data) if data is not None else None
    with tempfile.TemporaryDirectory(prefix="dsum-ensemble-") as work:
        sources = load_sources(paths, data, config, Path(work))
        if order is not None and sorted(order) != sorted(sources[0].summaries):
            raise EnsembleError(f"{data}: its fnames differ from those of {sources[0].name}.")
        frame, wins = ensemble(sources, tokenizer, order)
        atomic_write_text(out, frame.reset_index(drop=True).to_csv())  # the sample layout: a 0..n-1 index column
        result: dict[str, Any] = {
            "output": str(out), "count": len(frame), "metric": settings,
            "sources": [{"name": s.name, "wins": w, "win_share": w / max(len(frame), 1)}
                        for s, w in zip(sources, wins)],
        }
        if gold is not None:
            scored = [*(s.summaries for s in sources), dict(zip(frame["fname"], frame["summary"]))]
            scores = score_against_gold(scored, gold, tokenizer, references)
            for entry, score in zip(result["sources"], scores):
                entry["score"] = score
            member_means = [score["rouge_mean"] for score in scores[:-1]]
            result["ensemble"] = {"score": scores[-1], "members_mean_rouge_mean": float(np.mean(member_means)),
                                  "members_best_rouge_mean": float(np.max(member_means))}
    if report is not None:
        atomic_write_json(report, result)
    return result


def score_against_gold(
    summaries: Sequence[dict[str, str]], gold: Path, tokenizer: str, references: str
) -> list[dict[str, float]]:
    """ROUGE × 100 (``rouge1``, ``rouge2``, ``rougeL``, ``rouge_mean``) of each fname -> summary mapping against
    ``gold``'s references, as ``dsum.eval.score`` computes it."""
    try:
        gold_refs = read_gold(gold)
    except ScoreError as err:
        raise EnsembleError(str(err)) from None
    missing = [f for f in summaries[0] if f not in gold_refs]
    if missing or len(gold_refs) != len(summaries[0]):
        raise EnsembleError(
            f"{gold}: its fnames differ from the sources' ({len(missing)} not in it, e.g. {missing[:3]})."
        )
    fnames = list(gold_refs)
    refs = [gold_refs[f] for f in fnames]
    scores = [rouge_scores([mapping[f] for f in fnames], refs, tokenizer, references) for mapping in summaries]
    return [{k: float(score[k]) for k in ("rouge1", "rouge2", "rougeL", "rouge_mean")} for score in scores]


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: ensemble the sources, write the submission, print the report as JSON."""
    parser = ArgumentParser(
        prog="python -m dsum.eval.ensemble",
        description="Pick, per dialogue, the candidate summary the other sources agree with most (MBR with ROUGE).",
    )
    parser.add_argument("sources", nargs="+", type=Path,
                        help="Submission CSVs (fname,summary) and/or exported model directories (at least 3 in all).")
    parser.add_argument("--out", type=Path, required=True, help="Ensemble submission CSV to write.")
    parser.add_argument("--gold", type=Path, help="Labelled CSV: print each source's score and the ensemble's.")
    parser.add_argument("--data", type=Path,
                        help="Dialogues CSV (fname,dialogue) for model directories; also sets the output's row order.")
    parser.add_argument("--config", type=Path,
                        help="Config for predicting with model directories (default: the run's config.yaml).")
    parser.add_argument("--tokenizer", choices=list(TOKENIZERS), default=DEFAULT_TOKENIZER,
                        help="ROUGE tokenizer for agreement and scores.")
    parser.add_argument("--references", choices=list(REFERENCE_RULES), default="mean",
                        help="Rule over several gold references per row.")
    parser.add_argument("--report", type=Path, help="Also write the JSON report here.")
    args = parser.parse_args(argv)
    try:
        result = run(args.sources, args.out, args.gold, args.data, args.config, args.tokenizer, args.references,
                     args.report)
    except (EnsembleError, ImportError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    every_rank()  # a tool, not one rank of a training job: its messages show on every node
    main()
