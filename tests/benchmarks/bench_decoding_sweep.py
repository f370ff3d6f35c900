"""Decoding sweeps, one process per trial against in-process (``dsum.sweep.inprocess``): wall time of an 8-trial
``validate`` sweep on the local engine, and whether every trial scores the same both ways.

One command::

    nice python tests/benchmarks/bench_decoding_sweep.py [--models bart,llm] [--repeats 1] [--val-subset 16]

For each tiny model (``bart``: the random BART of ``python -m dsum.tiny``; ``llm``: the tiny chat LLM with a
LoRA adapter, ``configs/quickstart-llm.yaml``) it writes a grid sweep of 8 trials (``num_beams`` x
``no_repeat_ngram_size`` x ``model.postprocess.cut_unfinished``; the last one changes only the scoring, so the
in-process way generates 4 times and re-scores 4 times) over the bundled sample's dev set, and runs
``python -m dsum.sweep local`` on it with ``DSUM_SWEEP_IN_PROCESS=0`` and ``=1``, interleaved (the order
alternates between repeats). It prints the wall time of each run (start of the command to its exit: Python
start, study, 8 trials, summary), the engine's seconds for the first trial and the median of the later ones
(the in-process worker's start and model load are in its first trial), the ratio of the wall times, the cache
hits, and whether every combination's ``val/*`` metrics are equal both ways. Then ``--fit-trials`` training
trials (``sweeps/quick.yaml``, 2 batches) each way: forked from the slot's preloaded fork server, or a process
each; it prints every trial's start-up (process start, or fork, to the first training step: the run record's
``startup_seconds``). Timings are figures, not assertions.

This file is not collected by pytest (its name does not match ``test_*.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
CONFIGS = {"bart": "quickstart.yaml", "llm": "quickstart-llm.yaml"}
GRID = {"num_beams": {"values": [1, 2]}, "no_repeat_ngram_size": {"values": [0, 2]},
        "model.postprocess.cut_unfinished": {"values": [False, True]}}


def build_model(kind: str, root: Path) -> Path:
    """The tiny model ``kind`` under ``root``."""
    if kind == "bart":
        from dsum.tiny.build import build_all

        return build_all([SAMPLE / "train.csv"], root / "tiny")["bart"]
    from dsum.tiny.llm import build_tiny_llm

    return build_tiny_llm(root / "llm", [SAMPLE / "train.csv"], d_model=32, layers=1, vocab_size=1000,
                          pretrain_steps=0)


def write_sweep(kind: str, model: Path, work: Path, val_subset: int, max_new_tokens: int) -> Path:
    """The 8-trial validate sweep YAML for ``model``."""
    sweep = {
        "name": f"bench_{kind}", "program": str(REPO / "main.py"), "method": "grid",
        "metric": {"name": "val/rouge_mean", "goal": "maximize"},
        "command": ["${env}", "${interpreter}", "${program}", "validate",
                    "--config", str(REPO / "configs" / CONFIGS[kind]),
                    f"--model.pretrained={model}", f"--data.train_file={SAMPLE / 'train.csv'}",
                    f"--data.val_file={SAMPLE / 'dev.csv'}", f"--data.test_file={SAMPLE / 'dev.csv'}",
                    f"--data.predict_file={SAMPLE / 'test.csv'}", f"--data.cache_dir={work / 'cache'}",
                    f"--data.val_subset={val_subset}", f"--model.generation.max_new_tokens={max_new_tokens}",
                    "--trainer.logger=false", "--trainer.enable_progress_bar=false", "${args}"],
        "parameters": GRID,
    }
    path = work / f"bench_{kind}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def run_sweep(sweep: Path, cwd: Path, in_process: bool) -> tuple[float, dict]:
    """Wall seconds of ``python -m dsum.sweep local`` on ``sweep`` from ``cwd``, and its summary."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DSUM_SWEEP_IN_PROCESS": "1" if in_process else "0", "PYTHONPATH": str(REPO)}
    env.pop("DSUM_SWEEP_DIR", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dsum.sweep", "local", str(sweep)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: the sweep failed ({'in-process' if in_process else 'per process'}):\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    [summary_path] = (cwd / "outputs" / f"sweep_{sweep.stem}").glob("*_summary.json")
    return seconds, json.loads(summary_path.read_text())


def write_fit_sweep(model: Path, work: Path, trials: int) -> Path:
    """``sweeps/quick.yaml`` (fit) on the tiny BART: ``trials`` learning rates, 2 train batches each."""
    sweep = yaml.safe_load((REPO / "sweeps" / "quick.yaml").read_text())
    sweep.update(name="bench_fit", program=str(REPO / "main.py"), run_cap=trials)
    at = sweep["command"].index("${args}")
    sweep["command"][sweep["command"].index("configs/quickstart.yaml")] = str(REPO / "configs" / "quickstart.yaml")
    sweep["command"][at:at] = [
        f"--model.pretrained={model}", f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}", f"--data.test_file={SAMPLE / 'dev.csv'}",
        f"--data.predict_file={SAMPLE / 'test.csv'}", f"--data.cache_dir={work / 'cache'}",
        "--trainer.limit_train_batches=2", "--data.val_subset=8", "--model.generation.max_new_tokens=8",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    sweep["parameters"] = {"learning_rate": {"values": [1e-3 * (i + 1) for i in range(trials)]},
                           "num_train_epochs": {"value": 1}}
    path = work / "bench_fit.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def startup_seconds(cwd: Path, name: str) -> list[float]:
    """Each fit trial's process start (or fork) to its first training step, from its run record, in run order."""
    rows = []
    for record_path in sorted((cwd / "outputs" / f"sweep_{name}" / "runs").glob("*/run.json")):
        history = json.loads(record_path.read_text()).get("history") or [{}]
        if history[-1].get("startup_seconds") is not None:
            rows.append(float(history[-1]["startup_seconds"]))
    return rows


def trial_seconds(cwd: Path, name: str, study: str) -> list[float]:
    """Each trial's seconds as the engine measured them (claim to result), in trial order."""
    import optuna

    from dsum.sweep.pruning import open_storage
    from dsum.sweep.trials import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url(None, cwd / "outputs" / f"sweep_{name}"))
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return [float(t.user_attrs["seconds"]) for t in sorted(trials, key=lambda t: t.number) if "seconds" in t.user_attrs]


def scores(cwd: Path, name: str) -> dict[str, dict]:
    """Each trial's ``val/*`` metrics by its parameters."""
    rows = {}
    for record_path in (cwd / "outputs" / f"sweep_{name}" / "runs").glob("*/validate.json"):
        record = json.loads(record_path.read_text())
        rows[json.dumps(record["sweep_params"], sort_keys=True)] = record["final_metrics"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bart,llm", help="comma-separated: bart, llm")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each way per model, interleaved")
    parser.add_argument("--val-subset", type=int, default=16, help="validation dialogues per trial")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--fit-trials", type=int, default=4, help="training trials for start-up (0: skip)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_decoding_") as tmp:
        root = Path(tmp)
        lines = ["| model | way | run | sweep wall s | first trial s | later trials s (median) | cache hits |",
                 "|---|---|---|---|---|---|---|"]
        for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
            model = build_model(kind, root)
            sweep = write_sweep(kind, model, root, args.val_subset, args.max_new_tokens)
            times: dict[bool, list[float]] = {False: [], True: []}
            equal = True
            for repeat in range(args.repeats):
                order = (False, True) if repeat % 2 == 0 else (True, False)
                found = {}
                for in_process in order:
                    cwd = root / f"{kind}_{'in' if in_process else 'per'}_{repeat}"
                    seconds, summary = run_sweep(sweep, cwd, in_process)
                    times[in_process].append(seconds)
                    found[in_process] = scores(cwd, sweep.stem)
                    hits = sum(r.get("generation_cache") == "hit" for r in (summary.get("in_process") or {}).values())
                    way = "in-process" if in_process else "per process"
                    each = trial_seconds(cwd, sweep.stem, summary["sweep_id"])
                    lines.append(f"| {kind} | {way} | {repeat + 1} | {seconds:.1f} | {each[0]:.1f} | "
                                 f"{statistics.median(each[1:]):.1f} | {hits if in_process else '-'} |")
                    print(lines[-1], flush=True)
                equal &= len(found[False]) == 8 and found[False] == found[True]
            per, inp = statistics.median(times[False]), statistics.median(times[True])
            lines.append(f"| {kind} | ratio (per process / in-process) | | **{per / inp:.2f}x** | | | "
                         f"scores equal: {'yes' if equal else 'NO'} |")
        print("\n".join(lines))
        if args.fit_trials:
            model = build_model("bart", root)
            sweep = write_fit_sweep(model, root, args.fit_trials)
            fit = ["| fit trials | sweep wall s | start-up to first step, s (per trial) |", "|---|---|---|"]
            for in_process in (False, True):
                cwd = root / f"fit_{'in' if in_process else 'per'}"
                seconds, _ = run_sweep(sweep, cwd, in_process)
                way = "forked from a preloaded server" if in_process else "a process each"
                starts = ", ".join(f"{s:.2f}" for s in startup_seconds(cwd, "bench_fit"))
                fit.append(f"| {way} | {seconds:.1f} | {starts} |")
                print(fit[-1], flush=True)
            print("\n".join(fit))
        print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
