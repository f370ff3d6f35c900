"""Local sweep bookkeeping, kept in the Optuna study itself: the study's identity and storage, what a worker records
on each trial it claims (``*_ATTR`` user attributes), how a trial ended, when a RUNNING trial's worker is gone, and
the command ``wandb agent`` would run. :mod:`dsum.sweep.local` (the engine) uses these.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.trial import TrialState

from dsum.infra.files import atomic_write_json, read_json
from dsum.infra.log import note, warn
from dsum.infra.secrets import redact, redact_text
from dsum.sweep.spec import load_sweep
from dsum.sweep.summary import TRIAL_RECORDS
from dsum.sweep.wandb_backend import sweep_name

STORAGE_FILE = "optuna.journal"
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0
# Trial user attributes.
PARAMS_ATTR = "wandb_params"
RUN_ID_ATTR = "run_id"
HOST_ATTR = "dsum_host"
PID_ATTR = "dsum_pid"
PID_STARTED_ATTR = "dsum_pid_started"
HEARTBEAT_ATTR = "dsum_heartbeat"
STATE_ATTR = "dsum_state"
SKIPPED_ATTR = "dsum_skipped"
TRIAL_PID_ATTR = "dsum_trial_pid"  # the trial process itself (its worker's is PID_ATTR)
TRIAL_STARTED_ATTR = "dsum_trial_started"
RETRY_ATTR = "dsum_retry"  # 1, 2, ...: this trial re-runs the parameters of a trial whose worker died
RETRY_OF_ATTR = "dsum_retry_of"  # that trial's number
REQUEUED_ATTR = "dsum_requeued"  # this trial's worker died and its parameters were queued again
# How long a trial process orphaned by a dead worker gets to save and exit after SIGTERM, before SIGKILL.
ORPHAN_GRACE_SECONDS = 60.0
# Study user attribute: the grid was queued (so a resume never queues it twice).
GRID_ATTR = "dsum_grid_queued"
# The parts of a sweep YAML that define its search; the study id changes with them.
SEARCH_KEYS = ("program", "command", "method", "metric", "parameters", "early_terminate")


# ------------------------------------------------------------------------------------------- identity and storage
def local_study_id(sweep_file: str | Path, config: Mapping[str, Any] | None = None) -> str:
    """The study (and ``WANDB_SWEEP_ID``) of a sweep YAML: ``local-<name>-<hash of its search>``. The same YAML
    always gives the same id, so rerunning a command resumes its study; editing the search (parameters, method,
    metric, command) starts a new one instead of mixing two searches."""
    config = load_sweep(sweep_file) if config is None else config
    search = {key: config.get(key) for key in SEARCH_KEYS}
    digest = hashlib.sha256(json.dumps(search, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"local-{sweep_name(dict(config), sweep_file)}-{digest}"


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The storage every worker and trial opens: a database URL as given, else an absolute journal path."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage or sweep_dir / STORAGE_FILE).resolve())


def display_url(url: str) -> str:
    """A storage URL fit to print: a password in ``scheme://user:password@host`` masked."""
    return redact_text(re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", url))


# ------------------------------------------------------------------------------------------- stale trials
def _process_alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` runs and is the same process (same start time) as the one recorded."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            started is None or abs(process.create_time() - started) < 1.0)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell (permissions): leave it to the heartbeat


def process_started(pid: int | None = None) -> float | None:
    """The start time of process ``pid`` (default: this one), recorded beside its pid so a reused pid is not
    taken for the worker."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stop_trial_process(pid: int, started: float | None, grace: float = ORPHAN_GRACE_SECONDS) -> bool:
    """Stop a trial process whose worker died, if it still runs (a worker killed without its trial): SIGTERM
    (it saves ``last.ckpt`` and records ``interrupted``), then SIGKILL after ``grace`` seconds. Returns whether
    a process was stopped. A pid now used by another process (other start time) is left alone."""
    if not _process_alive(pid, started):
        return False
    try:
        process = psutil.Process(pid)
        process.terminate()
        try:
            process.wait(timeout=grace)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    except psutil.Error as error:
        warn(f"dsum: could not stop orphaned trial process {pid}: {error}")
        return False
    note(f"dsum: stopped trial process {pid}, orphaned by its dead worker")
    return True


def mark_record_failed(run_dir: Path, reason: str) -> bool:
    """Mark a dead trial's run record ``failed`` (with ``reason``) when it still says ``running``, so summaries
    and ``runs.csv`` never show it running forever. Returns whether the record was changed."""
    path = next((run_dir / name for name in TRIAL_RECORDS if (run_dir / name).is_file()), None)
    try:
        record = read_json(path) if path else None
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("status") != "running":
        return False
    record["status"] = "failed"
    history = record.get("history") or [{}]
    history[-1] = {**history[-1], "status": "failed", "error": reason, "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record["history"] = history
    atomic_write_json(path, redact(record))
    return True


def is_stale(trial: optuna.trial.FrozenTrial, now: float, host: str,
             stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """Whether a RUNNING trial's worker is gone: its process has ended (this host), or its heartbeat (the
    start time when it never beat) is older than ``stale_after`` seconds."""
    attrs = trial.user_attrs
    if attrs.get(HOST_ATTR) == host and PID_ATTR in attrs:
        return not _process_alive(int(attrs[PID_ATTR]), attrs.get(PID_STARTED_ATTR))
    last = attrs.get(HEARTBEAT_ATTR) or (trial.datetime_start.timestamp() if trial.datetime_start else now)
    return now - float(last) > stale_after


# ------------------------------------------------------------------------------------------- claims and outcomes
@dataclass
class Claim:
    """A trial a worker took: the Optuna trial, its W&B-form parameters and its run id."""

    trial: optuna.Trial
    params: dict[str, Any]
    run_id: str

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass
class Outcome:
    """How a trial ended, as Optuna and the printed line see it."""

    state: TrialState
    label: str  # completed / pruned / failed / interrupted
    value: float | None
    seconds: float
    returncode: int | None
    reason: str | None = None


def agent_command(config: Mapping[str, Any], params: Mapping[str, Any], args_json_file: str | Path
                  ) -> tuple[list[str], bool]:
    """The argv ``wandb agent`` runs for ``params`` (``wandb_agent.Agent._command_run``, wandb 0.31), and
    whether it reads ``${args_json_file}``. ``${interpreter}`` is this interpreter."""
    from wandb.sdk.launch.sweeps.utils import (
        DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args,
    )

    sweep_command = create_sweep_command(list(config.get("command") or DEFAULT_SWEEP_COMMAND))
    sweep_vars = create_sweep_command_args({"args": {name: {"value": v} for name, v in params.items()}})
    sweep_vars["interpreter"] = [sys.executable]
    sweep_vars["program"] = [config["program"]] if config.get("program") else []
    sweep_vars["args_json_file"] = [str(args_json_file)]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    command: list[str] = []
    for chunk in map(str, sweep_command):
        variable = chunk.startswith("${") and chunk.endswith("}")
        command += (sweep_vars.get(chunk[2:-1]) or []) if variable else [chunk]
    return command, "${args_json_file}" in sweep_command
