"""``python -m dsum.sweep local``: the same sweep YAMLs on Optuna, without a W&B server.

Every trial is launched exactly as ``wandb agent`` launches one: the YAML's ``command:`` expanded by wandb's
own helpers, ``WANDB_SWEEP_ID`` / ``WANDB_RUN_ID`` / ``WANDB_SWEEP_PARAM_PATH`` in its environment (the
parameter file in the agent's format), one process tree per trial. The trial's result is read from the run
record it writes (``run.json`` / ``validate.json``), never from its log.

- ``grid``: every combination once, in the YAML's order (W&B's order and de-duplication), queued in the
  study once; workers pop the queue, so no combination runs twice, whichever worker or machine takes it.
- ``random``: W&B's own sampling (:func:`dsum.sweep.spec.sample_params`, ``probabilities`` included).
- ``bayes``: Optuna's TPE over the same distributions; a distribution TPE cannot draw exactly
  (``normal``, ``beta``, ``probabilities``, ...) is refused, naming the parameter.
- ``early_terminate: hyperband``: W&B's rule (:class:`dsum.sweep.pruning.WandbHyperbandPruner`); trials
  report after each validation and stop themselves (run record status ``pruned``).

Storage: an Optuna journal file ``outputs/sweep_<name>/optuna.journal`` by default (safe for many worker
processes on one machine), or any database URL (``--storage sqlite:///...``, ``postgresql://...``) to share a
study between machines. Rerunning the same command resumes the same study (:func:`local_study_id`).

A trial whose worker died while it ran (killed sweep, lost machine) is marked failed when a worker next
claims a trial. Optuna's own heartbeats (``fail_stale_trials``) exist only for database storages, so the
sweep keeps its own: each running trial records its worker's host, pid and a heartbeat; a trial is stale
when its worker's process is gone (same host, checked at once) or its heartbeat is older than
:data:`STALE_AFTER_SECONDS` (another host).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from dsum.secrets import redact, redact_text
from dsum.sweep import pruning
from dsum.sweep.spec import SweepSpecError, distribution_of, load_sweep, sample_params, validate_sweep
from dsum.sweep.summary import record_metric, summarize, sweep_dir_for, trial_record
from dsum.sweep.wandb_backend import SWEEP_DIR_ENV, sweep_name
from dsum.sweep.workers import cpu_threads_env, visible_gpus

STORAGE_FILE = "optuna.journal"
LOCK_FILE = ".local_sweep.lock"
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0
INTERRUPT_GRACE_SECONDS = 60.0
# Trial user attributes.
PARAMS_ATTR = "wandb_params"
RUN_ID_ATTR = "run_id"
HOST_ATTR = "dsum_host"
PID_ATTR = "dsum_pid"
PID_STARTED_ATTR = "dsum_pid_started"
HEARTBEAT_ATTR = "dsum_heartbeat"
STATE_ATTR = "dsum_state"
SKIPPED_ATTR = "dsum_skipped"
# Study user attribute: the grid was queued (so a resume never queues it twice).
GRID_ATTR = "dsum_grid_queued"
# The parts of a sweep YAML that define its search; the study id changes with them.
SEARCH_KEYS = ("program", "command", "method", "metric", "parameters", "early_terminate")
# Distributions TPE draws exactly: (value range as (low, high) from the spec, log scale, quantised).
BAYES_FLOATS = {
    "uniform": (lambda s: (s["min"], s["max"]), False),
    "q_uniform": (lambda s: (s["min"], s["max"]), False),
    "log_uniform_values": (lambda s: (s["min"], s["max"]), True),
    "q_log_uniform_values": (lambda s: (s["min"], s["max"]), True),
    # Bounds as natural-log exponents: the same log-uniform law on exp(min)..exp(max).
    "log_uniform": (lambda s: (math.exp(s["min"]), math.exp(s["max"])), True),
    "q_log_uniform": (lambda s: (math.exp(s["min"]), math.exp(s["max"])), True),
    # 1/X log-uniform on 1/max..1/min is X log-uniform on min..max.
    "inv_log_uniform_values": (lambda s: (s["min"], s["max"]), True),
    "inv_log_uniform": (lambda s: (math.exp(-s["max"]), math.exp(-s["min"])), True),
}
BAYES_OTHERS = ("constant", "categorical", "int_uniform")


class SweepStopped(SystemExit):
    """The sweep stopped before its budget: too many failed trials in a row, or interrupted."""


# ------------------------------------------------------------------------------------------- identity
def local_study_id(sweep_file: str | Path, config: Mapping[str, Any] | None = None) -> str:
    """The study (and ``WANDB_SWEEP_ID``) of a sweep YAML: ``local-<name>-<hash of its search>``.

    The same YAML always gives the same id, so rerunning a command resumes its study; editing the
    search (parameters, method, metric, command) starts a new one instead of mixing two searches.
    """
    config = load_sweep(sweep_file) if config is None else config
    search = {key: config.get(key) for key in SEARCH_KEYS}
    digest = hashlib.sha256(json.dumps(search, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"local-{sweep_name(dict(config), sweep_file)}-{digest}"


def local_worker_command(sweep_file: str | Path, count: int | None, storage: str | None) -> list[str]:
    """The argv of one local worker process (``parallel --engine local`` starts several)."""
    command = [sys.executable, "-m", "dsum.sweep", "local", str(sweep_file)]
    if count:
        command += ["--count", str(count)]
    if storage:
        command += ["--storage", storage]
    return command


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The storage every worker and trial opens: a database URL as given, else an absolute journal path."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage or sweep_dir / STORAGE_FILE).resolve())


def display_url(url: str) -> str:
    """A storage URL fit to print: a password in ``scheme://user:password@host`` masked."""
    return redact_text(re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", url))


# ------------------------------------------------------------------------------------------- search space
def _grid_hash(value: Any) -> str:
    """W&B's grid identity of a value (integral floats equal ints: ``3.0`` is ``3``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return hashlib.md5(yaml.safe_dump(value, default_flow_style=True, sort_keys=True).encode()).hexdigest()


def grid_combinations(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a grid sweep, in W&B's order: the product of the parameters in YAML order
    (first parameter slowest), ``int_uniform`` as ``min..max``, ``q_uniform`` as ``arange(min, max, q)``,
    repeated combinations once.

    Raises:
        SweepSpecError: a parameter grid search cannot enumerate.
    """
    import numpy as np

    axes: list[tuple[str, list[Any]]] = []
    for name, spec in (config.get("parameters") or {}).items():
        dist = distribution_of(spec)
        if dist == "constant":
            values = [spec["value"]]
        elif dist == "categorical":
            values = list(spec["values"])
        elif dist == "int_uniform":
            values = list(range(int(spec["min"]), int(spec["max"]) + 1))
        elif dist == "q_uniform":
            values = np.arange(spec["min"], spec["max"], spec.get("q", 1)).tolist()
        else:
            raise SweepSpecError(f"parameters.{name}: grid search cannot enumerate {dist}; list the points "
                                 "with `values:` or use method random/bayes")
        axes.append((str(name), values))
    combos, seen = [], set()
    for combo in itertools.product(*[[(v, _grid_hash(v)) for v in values] for _, values in axes]):
        key = tuple(h for _, h in combo)
        if key not in seen:
            seen.add(key)
            combos.append({name: value for (name, _), (value, _) in zip(axes, combo, strict=True)})
    return combos


def check_bayes_space(config: Mapping[str, Any], path: str | Path | None = None) -> None:
    """Refuse, naming each parameter, what TPE cannot draw from exactly.

    Raises:
        SweepSpecError: a distribution without a bounded exact equivalent (``normal``, ``beta``, ...) or
            ``probabilities`` on a bayes sweep.
    """
    problems = []
    for name, spec in (config.get("parameters") or {}).items():
        dist = distribution_of(spec)
        if dist == "categorical_w_probabilities":
            problems.append(f"parameters.{name}: the local bayes engine (TPE) cannot weight values by "
                            "probabilities; drop `probabilities`, or use method random")
        elif dist not in BAYES_FLOATS and dist not in BAYES_OTHERS:
            problems.append(f"parameters.{name}: the local bayes engine (TPE) cannot draw {dist} exactly "
                            "(it needs bounds); use a bounded distribution, or method random")
    if problems:
        raise SweepSpecError(f"{path or 'sweep config'}: cannot run on the local engine:\n"
                             + "\n".join(f"  - {p}" for p in problems))


def _quantize(value: float, q: float) -> float:
    return round(value / q) * q  # W&B's rule: the grid is anchored at 0, not at min


def _suggest(trial: optuna.Trial, name: str, spec: Mapping[str, Any]) -> Any:
    """One parameter drawn by the study's sampler, in W&B's form (quantised, exponentiated, ...)."""
    dist = distribution_of(spec)
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        values = list(spec["values"])
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            return trial.suggest_categorical(name, values)
        keys = [json.dumps(v, sort_keys=True) for v in values]  # Optuna's choices must be scalars
        return values[keys.index(trial.suggest_categorical(name, keys))]
    if dist == "int_uniform":
        return trial.suggest_int(name, int(spec["min"]), int(spec["max"]))
    bounds, log = BAYES_FLOATS[dist]
    low, high = bounds(spec)
    value = trial.suggest_float(name, float(low), float(high), log=log)
    return _quantize(value, spec.get("q", 1)) if dist.startswith("q_") else value


# ------------------------------------------------------------------------------------------- the agent's argv
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
    for chunk in sweep_command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command += sweep_vars.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command, "${args_json_file}" in sweep_command


# ------------------------------------------------------------------------------------------- stale trials
def _process_alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` runs and is the same process (same start time) as the one recorded."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell (permissions): leave it to the heartbeat


def _process_started() -> float | None:
    import psutil

    try:
        return psutil.Process().create_time()
    except psutil.Error:
        return None


def is_stale(trial: optuna.trial.FrozenTrial, now: float, host: str) -> bool:
    """Whether a RUNNING trial's worker is gone: its process has ended (this host), or its heartbeat (the
    start time when it never beat) is older than :data:`STALE_AFTER_SECONDS`."""
    attrs = trial.user_attrs
    if attrs.get(HOST_ATTR) == host and PID_ATTR in attrs:
        return not _process_alive(int(attrs[PID_ATTR]), attrs.get(PID_STARTED_ATTR))
    last = attrs.get(HEARTBEAT_ATTR) or (trial.datetime_start.timestamp() if trial.datetime_start else now)
    return now - float(last) > STALE_AFTER_SECONDS


# ------------------------------------------------------------------------------------------- the sweep
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


class LocalSweep:
    """One invocation of ``local``: a study, K worker threads, each running one trial process at a time."""

    def __init__(self, sweep_file: str | Path, count: int | None, workers: int, storage: str | None,
                 max_consecutive_failures: int) -> None:
        if count is not None and count < 1:
            raise ValueError(f"--count must be at least 1, got {count}")
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if max_consecutive_failures < 1:
            raise ValueError(f"--max_consecutive_failures must be at least 1, got {max_consecutive_failures}")
        self.sweep_file = Path(sweep_file)
        self.config = load_sweep(sweep_file)
        validate_sweep(self.config, sweep_file)
        self.method = self.config["method"]
        if self.method == "bayes":
            check_bayes_space(self.config, sweep_file)
        self.combos = grid_combinations(self.config) if self.method == "grid" else []
        program = self.config.get("program")
        command = [str(c) for c in self.config.get("command") or []]
        if program and "${program}" in command and not Path(program).is_file():
            raise FileNotFoundError(f"{sweep_file}: program {program} not found from {Path.cwd()}; run from the "
                                    "directory the YAML's paths are relative to (the repository root)")
        metric = self.config.get("metric") or {}
        self.metric: str = metric.get("name", "val/rouge_mean")
        self.goal: str = metric.get("goal", "maximize")
        self.name = sweep_name(self.config, sweep_file)
        self.study_id = local_study_id(sweep_file, self.config)
        self.sweep_dir = Path(os.environ.get(SWEEP_DIR_ENV) or sweep_dir_for(self.name)).resolve()
        self.storage_url = storage_url(storage, self.sweep_dir)
        self.count, self.workers, self.max_failures = count, workers, max_consecutive_failures
        self.run_cap: int | None = self.config.get("run_cap")
        self.host, self.pid, self.pid_started = socket.gethostname(), os.getpid(), _process_started()
        self.gpus = visible_gpus()
        self.rng = random.Random()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.interrupted = False
        self.stop_reason: str | None = None
        self.claimed = 0
        self.failures_in_a_row = 0
        self.running: dict[int, subprocess.Popen] = {}
        self.errors: list[BaseException] = []
        for sub in ("runs", "logs"):
            (self.sweep_dir / sub).mkdir(parents=True, exist_ok=True)
        self.storage = pruning.open_storage(self.storage_url)
        self.study = self._open_study()

    # -------------------------------------------------------------------------------- study
    @contextmanager
    def _claim_lock(self) -> Iterator[None]:
        """Serialise study set-up and trial claims between this process's threads and other worker
        processes on this machine (run_cap and --count are counted in the storage under it)."""
        with self.lock, open(self.sweep_dir / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _open_study(self) -> optuna.Study:
        if self.method == "bayes":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(constant_liar=True)
        else:
            sampler = optuna.samplers.RandomSampler()  # unused: grid and random fix every value themselves
        with self._claim_lock():
            study = optuna.create_study(
                study_name=self.study_id, storage=self.storage, sampler=sampler,
                pruner=pruning.make_pruner(self.config.get("early_terminate")),
                direction=self.goal, load_if_exists=True,
            )
            if not study.user_attrs:
                study.set_user_attr("sweep_file", str(self.sweep_file))
                study.set_user_attr("sweep", json.loads(json.dumps(self.config, default=str)))
            if self.method == "grid" and GRID_ATTR not in study.user_attrs:
                for combo in self.combos:
                    study.enqueue_trial(combo, user_attrs={PARAMS_ATTR: combo})
                study.set_user_attr(GRID_ATTR, len(self.combos))
        return study

    def _fail_stale(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        now = time.time()
        study_id = self.storage.get_study_id_from_name(self.study_id)
        for trial in trials:
            if trial.state != TrialState.RUNNING or not is_stale(trial, now, self.host):
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            owner = f"{trial.user_attrs.get(HOST_ATTR, '?')}:{trial.user_attrs.get(PID_ATTR, '?')}"
            try:
                self.storage.set_trial_user_attr(trial_id, STATE_ATTR, "failed")
                self.storage.set_trial_user_attr(trial_id, "dsum_error", f"worker {owner} died while it ran")
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile
            print(f"dsum: trial {trial.number} {trial.user_attrs.get(RUN_ID_ATTR, '')} marked failed: its worker "
                  f"{owner} is gone", flush=True)

    def _claim(self) -> Claim | None:
        """Take the next trial, or None when the sweep is done (count, run_cap, grid exhausted, stopped)."""
        with self._claim_lock():
            if self.stop.is_set():
                return None
            if self.count is not None and self.claimed >= self.count:
                return self._done(f"--count {self.count} reached")
            trials = self.study.get_trials(deepcopy=False)
            self._fail_stale(trials)
            started = [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get(SKIPPED_ATTR)]
            if self.run_cap is not None and len(started) >= self.run_cap:
                return self._done(f"run_cap {self.run_cap} reached")
            if self.method == "grid" and not any(t.state == TrialState.WAITING for t in trials):
                return self._done(f"grid complete ({len(self.combos)} combinations)")
            trial = self.study.ask()
            if self.method == "grid":
                params = trial.user_attrs.get(PARAMS_ATTR)
                if params is None:  # another machine took the last combination first
                    trial.set_user_attr(SKIPPED_ATTR, True)
                    self.study.tell(trial, state=TrialState.FAIL)
                    return self._done(f"grid complete ({len(self.combos)} combinations)")
            elif self.method == "random":
                params = sample_params(self.config, self.rng)
            else:
                params = {str(name): _suggest(trial, str(name), spec)
                          for name, spec in self.config["parameters"].items()}
            run_id = f"t{trial.number:04d}-{secrets.token_hex(3)}"
            for key, value in {PARAMS_ATTR: params, RUN_ID_ATTR: run_id, HOST_ATTR: self.host, PID_ATTR: self.pid,
                               PID_STARTED_ATTR: self.pid_started, HEARTBEAT_ATTR: time.time()}.items():
                trial.set_user_attr(key, value)
            self.claimed += 1
            return Claim(trial, dict(params), run_id)

    def _done(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    # -------------------------------------------------------------------------------- one trial
    def _trial_env(self, claim: Claim, param_path: Path, slot: int) -> dict[str, str]:
        env = {
            **os.environ,
            # As `wandb agent`: its WANDB_DIR default, and `python` on PATH is this interpreter.
            "WANDB_DIR": os.environ.get("WANDB_DIR") or os.path.abspath(os.getcwd()),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "WANDB_SWEEP_ID": self.study_id,
            "WANDB_RUN_ID": claim.run_id,
            "WANDB_SWEEP_PARAM_PATH": str(param_path),
            # No W&B server knows this sweep id: log offline unless told otherwise.
            "WANDB_MODE": os.environ.get("WANDB_MODE") or "offline",
            SWEEP_DIR_ENV: str(self.sweep_dir),
            pruning.STORAGE_ENV: self.storage_url,
            pruning.STUDY_ENV: self.study_id,
            pruning.TRIAL_ENV: str(claim.number),
            pruning.METRIC_ENV: self.metric,
            pruning.PRUNER_ENV: json.dumps(self.config.get("early_terminate") or None),
        }
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return {**env, **cpu_threads_env(self.workers)}

    def _run_trial(self, claim: Claim, slot: int) -> Outcome:
        from wandb.sdk.lib.config_util import save_config_file_from_dict

        run_dir = self.sweep_dir / "runs" / claim.run_id
        log_path = self.sweep_dir / "logs" / f"{claim.run_id}.log"
        param_dir = self.sweep_dir / "wandb" / f"sweep-{self.study_id}"
        param_path = param_dir / f"config-{claim.run_id}.yaml"
        args = {name: {"value": value} for name, value in claim.params.items()}
        save_config_file_from_dict(str(param_path), args)  # what the agent writes
        command, wants_json = agent_command(self.config, claim.params, param_dir / f"config-{claim.run_id}.json")
        if wants_json:
            (param_dir / f"config-{claim.run_id}.json").write_text(json.dumps(claim.params), encoding="utf-8")
        claim.trial.set_user_attr("log_file", str(log_path))
        claim.trial.set_user_attr("run_dir", str(run_dir))
        started = time.monotonic()
        code: int | None = None
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"dsum: trial {claim.number} run {claim.run_id}: {redact_text(shlex.join(command))}\n")
            log.flush()
            try:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=self._trial_env(claim, param_path, slot))
            except OSError as error:
                log.write(f"dsum: cannot start the trial: {error}\n")
            else:
                self.running[claim.number] = process
                try:
                    code = self._wait(process, claim)
                finally:
                    self.running.pop(claim.number, None)
        return self._outcome(code, run_dir, time.monotonic() - started)

    def _wait(self, process: subprocess.Popen, claim: Claim) -> int:
        while True:
            try:
                return process.wait(timeout=HEARTBEAT_SECONDS)
            except subprocess.TimeoutExpired:
                try:
                    claim.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
                except Exception as error:  # a storage hiccup must not orphan the trial process
                    print(f"dsum: trial {claim.number}: heartbeat not recorded ({error})", flush=True)

    def _outcome(self, code: int | None, run_dir: Path, seconds: float) -> Outcome:
        record = trial_record(run_dir)
        status = (record or {}).get("status")
        if record is None:
            return Outcome(TrialState.FAIL, "failed", None, seconds, code,
                           f"exit code {code}, no run record in {run_dir}")
        if code != 0 or status in ("failed", "interrupted"):
            label = "interrupted" if status == "interrupted" else "failed"
            return Outcome(TrialState.FAIL, label, None, seconds, code, f"exit code {code}, run record {status!r}"
                           + (f": {record['history'][-1].get('error')}" if record.get("history") and
                              record["history"][-1].get("error") else ""))
        value = record_metric(record, self.metric, self.goal)
        if status == "pruned":
            return Outcome(TrialState.PRUNED, "pruned", value, seconds, code)
        if status != "completed":
            return Outcome(TrialState.FAIL, "failed", None, seconds, code, f"run record status {status!r}")
        if value is None or not math.isfinite(value):
            return Outcome(TrialState.FAIL, "failed", None, seconds, code,
                           f"{self.metric} was never recorded (value {value})")
        return Outcome(TrialState.COMPLETE, "completed", value, seconds, code)

    def _finish(self, claim: Claim, outcome: Outcome) -> None:
        trial = claim.trial
        log_path = self.sweep_dir / "logs" / f"{claim.run_id}.log"
        for key, value in {STATE_ATTR: outcome.label, "returncode": outcome.returncode,
                           "seconds": round(outcome.seconds, 2), "metric": outcome.value,
                           "dsum_error": outcome.reason}.items():
            if value is not None:
                trial.set_user_attr(key, value)
        if outcome.state == TrialState.COMPLETE:
            self.study.tell(trial, outcome.value)
        else:
            self.study.tell(trial, state=outcome.state)
        value = "-" if outcome.value is None else f"{outcome.value:.4f}"
        line = (f"dsum: trial {claim.number} {claim.run_id} {outcome.label} {self.metric}={value} "
                f"{json.dumps(redact(claim.params), ensure_ascii=False, default=str)} {outcome.seconds:.1f}s")
        if outcome.state == TrialState.FAIL:
            line += f" ({outcome.reason}; log {log_path})"
        print(line, flush=True)
        with self.lock:
            if outcome.state != TrialState.FAIL:
                self.failures_in_a_row = 0
            elif not self.interrupted:
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= self.max_failures and not self.stop.is_set():
                    self.stop_reason = (f"{self.failures_in_a_row} trials failed in a row "
                                        f"(max_consecutive_failures={self.max_failures}); last trial's log: "
                                        f"{log_path}")
                    self.stop.set()

    def _worker(self, slot: int) -> None:
        try:
            while (claim := self._claim()) is not None:
                try:
                    outcome = self._run_trial(claim, slot)
                except BaseException:
                    self.study.tell(claim.trial, state=TrialState.FAIL, skip_if_finished=True)
                    raise
                self._finish(claim, outcome)
        except BaseException as error:  # surface it in the main thread; stop the other workers
            self.errors.append(error)
            self.stop.set()

    # -------------------------------------------------------------------------------- the whole sweep
    def _signal_children(self, signum: int) -> None:
        for process in list(self.running.values()):
            if process.poll() is None:
                process.send_signal(signum)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        self.stop_reason = self.stop_reason or "interrupted (SIGTERM)"
        self.stop.set()
        self._signal_children(signal.SIGTERM)  # trials save last.ckpt and record `interrupted`

    def run(self) -> dict[str, Any]:
        finished = sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))
        print(f"dsum: local sweep {self.name}: study {self.study_id} ({self.method}, {self.goal} {self.metric}), "
              f"{'resuming with ' + str(finished) + ' finished trials' if finished else 'new'}; storage "
              f"{display_url(self.storage_url)}; runs in {self.sweep_dir / 'runs'}, logs in {self.sweep_dir / 'logs'}; "
              f"W&B {os.environ.get('WANDB_MODE') or 'offline'}", flush=True)
        threads = [threading.Thread(target=self._worker, args=(slot,), name=f"dsum-local-{slot}")
                   for slot in range(self.workers)]
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if on_main else None
        try:
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    thread.join()
            except KeyboardInterrupt:
                self.interrupted = True
                self.stop_reason = "interrupted (Ctrl+C)"
                self.stop.set()
                print("dsum: interrupted; waiting for running trials to record their state", flush=True)
                deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
                while any(p.poll() is None for p in list(self.running.values())) and time.monotonic() < deadline:
                    time.sleep(0.5)
                self._signal_children(signal.SIGTERM)
                for thread in threads:
                    thread.join()
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
        if self.errors:
            raise self.errors[0]
        summary = summarize(self.sweep_dir, self.study_id, self.metric, self.goal)
        summary.update(storage=display_url(self.storage_url), stop_reason=self.stop_reason)
        best = summary["best_run_id"]
        print(f"dsum: {self.sweep_dir / (self.study_id + '_summary.json')}: "
              + (f"best {best} {self.metric}={summary['best_metric']:.4f}" if best else "no completed trial")
              + (f"; stopped: {self.stop_reason}" if self.stop_reason else ""), flush=True)
        if self.interrupted or self.failures_in_a_row >= self.max_failures:
            raise SweepStopped(f"dsum: sweep {self.name} stopped: {self.stop_reason}")
        return summary


def run_local(sweep_file: str | Path, count: int | None = None, workers: int = 1, storage: str | None = None,
              max_consecutive_failures: int = 3) -> dict[str, Any]:
    """Run a sweep YAML on Optuna without a W&B server; returns the sweep summary (see ``summarize``).

    Args:
        sweep_file: A sweep YAML, e.g. ``sweeps/quick.yaml``.
        count: Trials to run in this invocation, across its workers (``run_cap`` counts every trial of
            the study, on every machine).
        workers: Trial processes at once (each pinned to its own GPU when GPUs exist).
        storage: Optuna storage: a database URL or a journal file path (default
            ``outputs/sweep_<name>/optuna.journal``).
        max_consecutive_failures: Stop after this many failed trials in a row.

    Raises:
        SweepSpecError: the YAML is invalid, or asks for what the local engine cannot do exactly.
        SweepStopped: too many failures in a row, or interrupted (after writing the summary).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return LocalSweep(sweep_file, count, workers, storage, max_consecutive_failures).run()
