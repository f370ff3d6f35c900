"""``python -m dsum.sweep {create,agent,parallel,serial,summarize,local,report,registry}``.

W&B sweeps need the W&B server; ``local`` runs the same YAMLs offline on Optuna. Both launch every trial as a
``wandb agent`` would: one ``main.py`` process tree per trial.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from jsonargparse import CLI

from dsum.constants import MONITOR
from dsum.infra.files import atomic_write_json
from dsum.infra.log import every_rank, note
from dsum.registry import (
    BEST, DEFAULT_REGISTRY, SANDBOX_REGISTRY, alias_version, key_dir_of, list_keys, move_alias, parse_version,
    version_meta,
)
from dsum.sweep.spec import load_sweep
from dsum.sweep.summary import collect_trials, sweep_dir_for
from dsum.sweep.summary import summarize as write_summary
from dsum.sweep.wandb_backend import (
    agent_command, agent_env, create_sweep, require_server, run_agent, sweep_name, sweep_path,
)
from dsum.sweep.workers import results_table, run_workers

Engine = Literal["wandb", "local"]


def _resolve(sweep: str, project: str | None, entity: str | None) -> tuple[str, str, dict[str, Any]]:
    """(sweep id, name, config): a YAML path creates a new W&B sweep; anything else is an existing id."""
    if sweep.endswith((".yaml", ".yml")) and Path(sweep).is_file():
        config = load_sweep(sweep)
        return create_sweep(sweep, project, entity), sweep_name(config, sweep), config
    return sweep, sweep.rsplit("/", 1)[-1], {}


def create(sweep_file: str, project: str | None = None, entity: str | None = None) -> str:
    """Validate a sweep YAML and create the W&B sweep; prints the sweep id.

    Args:
        sweep_file: A sweep YAML, e.g. ``sweeps/hyperparameter.yaml``.
        project: W&B project (default: the YAML's, ``WANDB_PROJECT`` or ``dsum``).
        entity: W&B entity (default: the YAML's or ``WANDB_ENTITY``).
    """
    sweep_id = create_sweep(sweep_file, project, entity)
    print(sweep_id)
    return sweep_id


def summarize(sweep: str, sweep_id: str | None = None, from_wandb: bool = False, project: str | None = None,
              entity: str | None = None, registry: str | None = str(DEFAULT_REGISTRY),
              sandbox_registry: str = str(SANDBOX_REGISTRY)) -> dict[str, Any]:
    """Write ``outputs/sweep_<name>/<sweep_id>_summary.json`` and ``<sweep_id>_runs.csv`` and promote the
    best trial's exported model as a new registry version if it beats the ``best`` of its evaluation key.

    Args:
        sweep: The sweep YAML (or its name).
        sweep_id: Which sweep (default: the only one with trials in the sweep directory).
        from_wandb: Also read trials from the W&B API (agents on other machines).
        project: W&B project for ``from_wandb``.
        entity: W&B entity for ``from_wandb``.
        registry: Registry root; ``null`` not to promote.
        sandbox_registry: Registry root for runs on the bundled sample data or ``dsum.tiny`` models.
    """
    config = load_sweep(sweep) if Path(sweep).is_file() else {}
    name = sweep_name(config, sweep) if config else sweep
    directory = sweep_dir_for(name)
    if sweep_id is None:
        ids = sorted({t["sweep_id"] for t in collect_trials(directory)} - {None})
        if len(ids) != 1:
            raise SystemExit(f"{directory}: say which sweep with --sweep_id (found: {', '.join(ids) or 'none'})")
        sweep_id = ids[0]
    metric = config.get("metric") or {}
    summary = write_summary(directory, sweep_id, metric.get("name", MONITOR), metric.get("goal", "maximize"),
                            wandb_path=sweep_path(sweep_id, project, entity) if from_wandb else None,
                            registry=registry, sandbox_registry=sandbox_registry)
    if summary.get("promoted"):
        print(f"dsum: promoted {summary['registry_path']} (best of {summary['registry_key']})")
    print(f"dsum: {directory / f'{sweep_id}_summary.json'}: best {summary['best_run_id']} = {summary['best_metric']}")
    return summary


def agent(sweep: str, count: int | None = None, project: str | None = None, entity: str | None = None,
          in_process: bool | None = None) -> int:
    """Run one ``wandb agent`` (``--count N``) on a new sweep (YAML path) or an existing sweep id, then summarize.

    Args:
        sweep: A sweep YAML (creates the sweep) or an existing sweep id (``entity/project/id`` or ``id``).
        count: Trials this agent runs (default: until the sweep ends).
        project: W&B project.
        entity: W&B entity.
        in_process: For a decoding sweep from a YAML (``validate``/``test``): run its trials in one worker process
            that keeps the model loaded (W&B's Python agent); default on unless ``DSUM_SWEEP_IN_PROCESS=0``.
    """
    from dsum.sweep.inprocess import SUBCOMMANDS, in_process_enabled, run_wandb_agent

    require_server()
    sweep_id, name, config = _resolve(sweep, project, entity)
    decoding = bool(config) and any(str(part) in SUBCOMMANDS for part in config.get("command") or [])
    if decoding and in_process_enabled(in_process):
        code = 1 if run_wandb_agent(sweep_id, name, config, count, project, entity) else 0
    else:
        code = run_agent(sweep_id, name, count, project, entity)
    if config:  # always set for a decoding sweep
        summarize(sweep, sweep_id.rsplit("/", 1)[-1])
    return code


def parallel(sweep: str, num_workers: int = 2, runs_per_worker: int = 1, engine: Engine = "wandb",
             project: str | None = None, entity: str | None = None, storage: str | None = None,
             gpus_per_worker: int = 1) -> list[dict]:
    """N agents at once on one sweep, each pinned to its own GPUs when GPUs exist, each with its own log.
    One worker failing does not stop the others. Ends with each worker's status, return code and time,
    saved as ``outputs/sweep_<name>/parallel_<name>_<sweep_id>_summary.json``.

    Args:
        sweep: Sweep YAML (or, for ``wandb``, an existing sweep id).
        num_workers: Agent processes.
        runs_per_worker: Trials per agent.
        engine: ``wandb`` (needs the server) or ``local`` (Optuna, offline).
        project: W&B project.
        entity: W&B entity.
        storage: ``local`` only: Optuna storage URL shared by the workers (default: a file under outputs/).
        gpus_per_worker: GPUs each worker gets (disjoint groups; GPUs left over by an uneven split stay unused),
            for trials that run DDP inside: give them ``--trainer.devices=K`` in the sweep's ``command``.
    """
    if engine == "local":
        from dsum.sweep.local import local_study_id, local_worker_command

        config = load_sweep(sweep)
        name = sweep_name(config, sweep)
        sweep_id = local_study_id(sweep, config)
        commands = [local_worker_command(sweep, runs_per_worker, storage, gpus_per_worker)
                    for _ in range(num_workers)]
        env: dict[str, str] = {}
    else:
        require_server()
        sweep_id, name, config = _resolve(sweep, project, entity)
        commands = [agent_command(sweep_id, runs_per_worker, project, entity) for _ in range(num_workers)]
        env = agent_env(name)
    directory = sweep_dir_for(name)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    table = results_table(run_workers(commands, directory / "logs" / f"parallel_{time.strftime('%Y%m%d-%H%M%S')}",
                                      env, gpus_per_worker=gpus_per_worker))
    short_id = sweep_id.rsplit("/", 1)[-1]
    atomic_write_json(directory / f"parallel_{name}_{short_id}_summary.json", {
        "sweep": sweep, "sweep_id": short_id, "engine": engine, "num_workers": num_workers,
        "runs_per_worker": runs_per_worker, "started_at": started, "workers": table,
    })
    for row in table:
        print(f"worker {row['worker']}: {row['status']} rc={row['returncode']} {row['elapsed_seconds']}s "
              f"{row['log_file']}")
    if config or engine == "local":
        summarize(sweep, short_id)
    return table


def serial(sweeps: list[str], runs_per_sweep: int = 10, engine: Engine = "wandb", project: str | None = None,
           entity: str | None = None, storage: str | None = None) -> list[dict[str, Any]]:
    """Several sweeps one after another, ``runs_per_sweep`` trials each, each summarized when it ends.

    Args:
        sweeps: Sweep YAMLs, run in this order.
        runs_per_sweep: Trials per sweep.
        engine: ``wandb`` (needs the server) or ``local`` (Optuna, offline).
        project: W&B project.
        entity: W&B entity.
        storage: ``local`` only: Optuna storage URL.
    """
    summaries = []
    for sweep in sweeps:
        note(f"dsum: sweep {sweep} ({runs_per_sweep} runs, {engine})")
        if engine == "local":
            summaries.append(local(sweep, count=runs_per_sweep, storage=storage))
        else:
            sweep_id, name, _ = _resolve(sweep, project, entity)
            run_agent(sweep_id, name, runs_per_sweep, project, entity)
            summaries.append(summarize(sweep, sweep_id.rsplit("/", 1)[-1]))
    return summaries


def local(sweep_file: str, count: int | None = None, workers: int = 1, storage: str | None = None,
          max_consecutive_failures: int = 3, gpus_per_worker: int = 1, in_process: bool | None = None
          ) -> dict[str, Any]:
    """Run a sweep YAML without a W&B server, on Optuna; trials are launched exactly as ``wandb agent`` would.
    Exits non-zero when every trial it ran failed, naming the last trial's log.

    Args:
        sweep_file: A sweep YAML, e.g. ``sweeps/quick.yaml``.
        count: Trials to run in this invocation, across all workers (``run_cap`` also applies).
        workers: Trial processes at once on this machine.
        storage: Optuna storage URL shared with workers elsewhere (e.g. ``postgresql://...``); default: a
            file under ``outputs/sweep_<name>/``. Rerunning the same command resumes the same study.
        max_consecutive_failures: Stop after this many failed trials in a row.
        gpus_per_worker: GPUs each trial process sees (disjoint groups), for trials that run DDP inside.
        in_process: ``validate``/``test`` trials in one long-lived process per worker that keeps the model
            loaded and reuses identical generations, and ``fit`` trials forked from a process with the heavy
            imports done; default on unless ``DSUM_SWEEP_IN_PROCESS=0``. ``false``: a new process per trial.
    """
    from dsum.sweep.local import run_local

    return run_local(sweep_file, count=count, workers=workers, storage=storage,
                     max_consecutive_failures=max_consecutive_failures, gpus_per_worker=gpus_per_worker,
                     in_process=in_process)


def report(sweep_dir: str, top: int = 10, sweep_id: str | None = None) -> list[str]:
    """Write a PNG (metric against each swept parameter, best-so-far over trials) and a Markdown table
    of the top runs for a finished sweep directory. Works offline.

    Args:
        sweep_dir: A sweep's output directory, e.g. ``outputs/sweep_quick``.
        top: Rows in the Markdown table.
        sweep_id: Report only this sweep (default: one report per sweep id found in the directory).
    """
    from dsum.sweep.report import write_report

    paths = [str(p) for p in write_report(sweep_dir, top=top, sweep_id=sweep_id)]
    for path in paths:
        print(path)
    return paths


def registry_list(registry: str = str(DEFAULT_REGISTRY)) -> list[dict[str, Any]]:
    """List every evaluation key of a registry, its versions (metric value, run, time) and where ``best`` points.

    Args:
        registry: Registry root (``models/sandbox`` for sample-data / tiny-model runs).
    """
    keys = list_keys(registry)
    if not keys:
        print(f"{registry}: no models")
    for entry in keys:
        key = entry["evaluation_key"]
        if key is None:
            print(f"{Path(registry) / entry['key']}  damaged: {entry['error']}")
        else:
            print(f"{Path(registry) / entry['key']}  {key.get('metric')} ({key.get('goal')}) on {key.get('val_name')} "
                  f"subset={key.get('val_subset')} settings={key.get('settings')}")
        for meta in entry["versions"]:
            mark = "best ->" if meta["version"] == entry["best"] else "       "
            if "error" in meta:
                print(f"  {mark} v{meta['version']}  damaged: {meta['error']}")
                continue
            print(f"  {mark} v{meta['version']}  {meta['metric']['value']:.4f}  run {meta.get('run_id')}  "
                  f"sweep {meta.get('sweep_id')}  {meta.get('promoted_at')}")
    return keys


def registry_show(key: str, version: str, registry: str = str(DEFAULT_REGISTRY)) -> dict[str, Any]:
    """Print one version's ``meta.json`` (metric, settings, validation hash, run, params).

    Args:
        key: The key directory name (as ``registry list`` prints it).
        version: ``v<N>``, ``<N>`` or ``best``.
        registry: Registry root.
    """
    key_dir = key_dir_of(registry, key)
    number = alias_version(key_dir, version) if version == BEST else parse_version(version, key_dir)
    if number is None:
        raise ValueError(f"{key_dir}: no '{BEST}' alias (no model promoted)")
    meta = version_meta(key_dir, number)
    print(json.dumps(meta, indent=2, ensure_ascii=False))
    return meta


def registry_rollback(key: str, version: str, registry: str = str(DEFAULT_REGISTRY)) -> dict[str, Any]:
    """Point ``best`` at an earlier version; later promotions must beat that version.

    Args:
        key: The key directory name (as ``registry list`` prints it).
        version: ``v<N>`` or ``<N>``.
        registry: Registry root.
    """
    key_dir = key_dir_of(registry, key)  # an unknown key or a path is refused before anything is created
    meta = move_alias(key_dir, parse_version(version, key_dir))
    print(f"dsum: {Path(registry) / key / BEST} -> v{meta['version']} ({meta['metric']['value']})")
    return meta


def main() -> None:
    try:
        CLI({"create": create, "agent": agent, "parallel": parallel, "serial": serial, "summarize": summarize,
             "local": local, "report": report,
             "registry": {"list": registry_list, "show": registry_show, "rollback": registry_rollback}},
            as_positional=True)
    except (FileNotFoundError, ValueError) as error:
        # Bad input (a sweep YAML, a parameter, a directory): the message says what and where.
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    every_rank()  # a tool, not one rank of a training job: its messages show on every node
    main()
