"""Per-sweep summaries from the run records trials wrote (and optionally from the W&B API)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from dsum.callbacks.record import RUN_RECORD
from dsum.constants import MONITOR, SWEEP_DIR_ENV
from dsum.eval.fidelity import FIDELITY_KEYS
from dsum.infra.files import atomic_write_json, atomic_write_text, read_json
from dsum.infra.log import warn
from dsum.infra.secrets import redact
from dsum.registry import (
    DEFAULT_REGISTRY, SANDBOX_REGISTRY, Goal, RegistryError, promote_if_better, registry_for, resolve, run_facts,
    wandb_online,
)

TRIAL_RECORDS = (RUN_RECORD, "validate.json")


def sweep_dir_for(name: str, root: str | Path = "outputs") -> Path:
    """Where a sweep's trials and summaries live: ``$DSUM_SWEEP_DIR`` if set, else ``outputs/sweep_<name>``."""
    return Path(os.environ.get(SWEEP_DIR_ENV) or Path(root) / f"sweep_{name}")


def record_metric(record: dict[str, Any], metric: str, goal: Goal) -> float | None:
    """A trial's result from its run record: ``best_metric`` when the run monitored the sweep's metric,
    else the best finite logged value of ``metric`` in its ``metrics_history``."""
    if record.get("monitor", metric) == metric and record.get("best_metric") is not None:
        return float(record["best_metric"])
    values = [float(h[metric]) for h in record.get("metrics_history") or []
              if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def trial_record(run_dir: Path) -> dict[str, Any] | None:
    """The record a trial wrote: ``run.json`` for fit trials, ``validate.json`` for generation sweeps."""
    for name in TRIAL_RECORDS:
        path = run_dir / name
        if path.is_file():
            return read_json(path)
    return None


def collect_trials(sweep_dir: str | Path, sweep_id: str | None = None, metric: str = MONITOR,
                   goal: Goal = "maximize") -> list[dict[str, Any]]:
    """One row per trial under ``<sweep_dir>/runs/*``: run id, state, metric, params, paths."""
    rows = []
    for run_dir in sorted(Path(sweep_dir, "runs").glob("*")):
        record = trial_record(run_dir)
        if record is None:
            continue
        if sweep_id and (record.get("wandb") or {}).get("sweep_id") not in (sweep_id, None):
            continue
        rows.append({
            "run_id": record.get("run_id") or run_dir.name,
            "sweep_id": (record.get("wandb") or {}).get("sweep_id"),
            "state": record.get("status", "unknown"),
            "metric": record_metric(record, metric, goal),
            "params": record.get("sweep_params", {}),
            "run_dir": str(run_dir),
            "best_model": record.get("best_model"),
            "started_at": (record.get("history") or [{}])[0].get("started_at"),
            "model_version": evaluated_version(run_dir),
            "fidelity": fidelity_at_best(record, metric, goal),
        })
    return rows


def fidelity_at_best(record: dict[str, Any], metric: str, goal: Goal) -> dict[str, float] | None:
    """Mask precision, recall, F1 and length ratio (:mod:`dsum.eval.fidelity`) of the validation that scored the
    trial's best ``metric`` (the record's final metrics for a ``validate`` trial), or None if not recorded."""
    prefix = metric.split("/", 1)[0] + "/" if "/" in metric else ""
    entries = [h for h in record.get("metrics_history") or []
               if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])]
    entry = (max if goal == "maximize" else min)(entries, key=lambda h: h[metric]) if entries else \
        record.get("final_metrics") or {}
    found = {key: entry[prefix + key] for key in FIDELITY_KEYS if isinstance(entry.get(prefix + key), (int, float))}
    return found or None


def evaluated_version(run_dir: Path) -> dict[str, Any] | None:
    """The registry version a trial started from (``--model.pretrained=models/registry/<key>/best``), if any:
    what a generation sweep tunes."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    model = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model") or {}
    pretrained = (model.get("init_args") or {}).get("pretrained")
    return resolve(pretrained) if isinstance(pretrained, str) else None


def promote_best(best: dict[str, Any], sweep_id: str, metric: str, goal: Goal, registry: str | Path,
                 sandbox_registry: str | Path) -> dict[str, Any]:
    """Promote the best trial's exported model into the registry of its evaluation key (sample-data and tiny-model
    runs into ``sandbox_registry``). Returns what happened; a refusal is reported, never raised."""
    run_dir = Path(best["run_dir"])
    record = trial_record(run_dir) or {}
    try:
        facts = run_facts(record, metric, goal, run_dir, best["best_model"])
        root = registry_for(facts, registry, sandbox_registry)
        wandb_info = record.get("wandb") or {}
        online = wandb_info.get("mode") not in ("offline", "disabled", "dryrun") and wandb_online()
        promotion = promote_if_better(
            best["best_model"], best["metric"], facts.key, root,
            meta={"run_id": best["run_id"], "sweep_id": sweep_id, "params": best["params"], "run_dir": str(run_dir),
                  "model": {"class_path": facts.model_class, "pretrained": facts.pretrained},
                  "val_file": facts.val_file, "sandbox": facts.sandbox},
            wandb_run={"run_id": wandb_info.get("run_id"), "project": wandb_info.get("project")} if online else None,
        )
    except (RegistryError, OSError, ValueError, yaml.YAMLError) as error:
        # A damaged file (key.json, config.yaml, a half-written export): the summary reports it and goes on.
        warn(f"dsum: not promoted: {error}")
        return {"promoted": False, "registry": None, "registry_key": None, "registry_version": None,
                "promotion_error": str(error)}
    version = promotion.version if promotion.promoted else (promotion.incumbent or {}).get("version")
    return {"promoted": promotion.promoted, "registry": str(root), "registry_key": facts.key.slug(),
            "registry_version": version, "registry_path": str(promotion.key_dir / f"v{version}") if version else None,
            "sandbox": facts.sandbox, "promotion_error": None}


def wandb_trials(sweep_path: str, metric: str) -> list[dict[str, Any]]:
    """Trials as the W&B server knows them (agents on other machines): ``entity/project/sweep_id``."""
    import wandb

    sweep = wandb.Api().sweep(sweep_path)
    return [{
        "run_id": run.id,
        "sweep_id": sweep_path.rsplit("/", 1)[-1],
        "state": {"finished": "completed", "crashed": "failed", "killed": "interrupted"}.get(run.state, run.state),
        "metric": run.summary.get(f"{metric}_best", run.summary.get(metric)),
        "params": {k: v for k, v in run.config.items() if not k.startswith("_")},
        "run_dir": None,
        "best_model": None,
        "started_at": getattr(run, "created_at", None),
    } for run in sweep.runs]


def best_trial(trials: list[dict[str, Any]], goal: Goal) -> dict[str, Any] | None:
    """The trial with the best metric (the first of equals), or None."""
    scored = [trial for trial in trials if trial["metric"] is not None]
    return (max if goal == "maximize" else min)(scored, key=lambda trial: trial["metric"], default=None)


def summarize(sweep_dir: str | Path, sweep_id: str, metric: str = MONITOR, goal: Goal = "maximize",
              wandb_path: str | None = None, registry: str | Path | None = DEFAULT_REGISTRY,
              sandbox_registry: str | Path = SANDBOX_REGISTRY, trial_rows: list[dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    """Write ``<sweep_dir>/<sweep_id>_summary.json`` and ``<sweep_id>_runs.csv``; promote the best model.

    Args:
        sweep_dir: The sweep's output directory (``outputs/sweep_<name>``).
        sweep_id: The sweep id (W&B's, or the local study's name).
        metric: The metric trials were ranked by.
        goal: ``maximize`` or ``minimize``.
        wandb_path: ``entity/project/sweep_id`` to also read trials from the W&B API; local records win.
        registry: Registry root real runs promote into, or None not to promote.
        sandbox_registry: Registry root for runs on the bundled sample data or on ``dsum.tiny`` models.
        trial_rows: The trials (:func:`collect_trials` rows) instead of the run records: the local engine's study's.
    """
    sweep_dir = Path(sweep_dir)
    trials = {t["run_id"]: t for t in (wandb_trials(wandb_path, metric) if wandb_path else [])}
    local = collect_trials(sweep_dir, sweep_id, metric, goal) if trial_rows is None else trial_rows
    trials.update({t["run_id"]: t for t in local})
    rows = sorted(trials.values(), key=lambda t: str(t.get("started_at") or ""))
    values = [t["metric"] for t in rows if t["metric"] is not None and t["state"] == "completed"]
    best = best_trial([t for t in rows if t["state"] == "completed"], goal)
    promotion: dict[str, Any] = {"promoted": False, "registry": None, "registry_key": None, "registry_version": None}
    if registry is not None and best is not None and best.get("best_model") and best.get("run_dir"):
        promotion = promote_best(best, sweep_id, metric, goal, registry, sandbox_registry)
    tuned = {json.dumps(t["model_version"], sort_keys=True) for t in rows if t.get("model_version")}
    summary = {
        "sweep_id": sweep_id,
        "metric": metric,
        "goal": goal,
        "best_run_id": best and best["run_id"],
        "best_metric": best and best["metric"],
        "best_params": best and best["params"],
        "best_model_path": best and best["best_model"],
        "best_run_dir": best and best["run_dir"],
        **promotion,
        # The registry versions the trials evaluated (a generation sweep names the model it tunes).
        "tuned_models": [json.loads(t) for t in sorted(tuned)],
        "metric_stats": {
            "count": len(values),
            "mean": statistics.fmean(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        },
        "states": dict(Counter(t["state"] for t in rows)),
        "runs": len(rows),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(sweep_dir / f"{sweep_id}_summary.json", redact(summary))
    atomic_write_text(sweep_dir / f"{sweep_id}_runs.csv", runs_csv(rows))
    return summary


def runs_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV row per trial; each swept parameter gets its own column."""
    params = sorted({k for row in rows for k in row["params"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run_id", "state", "metric", *params, "run_dir", "best_model"])
    for row in rows:
        writer.writerow([row["run_id"], row["state"], row["metric"], *(row["params"].get(p) for p in params),
                         row["run_dir"], row["best_model"]])
    return redact(buffer.getvalue())
