"""``python -m dsum.sweep local``: the same sweep YAMLs on Optuna, without a W&B server.

Each trial is launched as ``wandb agent`` launches one (the YAML's ``command:`` expanded by wandb's own helpers,
``WANDB_SWEEP_ID`` / ``WANDB_RUN_ID`` / ``WANDB_SWEEP_PARAM_PATH`` set), in a process tree of its own; its result is
read from the run record it writes (``run.json`` / ``validate.json``), never from its log. ``grid`` queues every
combination once, in W&B's order; ``random`` is W&B's own sampling; ``bayes`` is Optuna's TPE over the same
distributions (one it cannot draw exactly is refused); ``early_terminate: hyperband`` is W&B's rule
(:class:`dsum.sweep.pruning.WandbHyperbandPruner`), which trials apply to themselves (run record ``pruned``).

Storage: an Optuna journal ``outputs/sweep_<name>/optuna.journal`` by default, or a database URL (``--storage
sqlite:///...``, ``postgresql://...``) to share a study between machines; rerunning a command resumes its study.
On PostgreSQL, claims hold an advisory lock (:func:`database_lock`), so ``run_cap`` and the grid hold across machines.

A trial whose worker died is settled at the next claim: its process stopped, its result kept if it had finished,
else marked failed and its parameters queued again (up to :data:`MAX_TRIAL_RETRIES` times). It is stale when its
worker's process is gone (same host) or its heartbeat is older than ``$DSUM_SWEEP_STALE_AFTER_SECONDS`` (another
host, named by ``$DSUM_SWEEP_HOST``, default the host name; Optuna's own heartbeats exist only for databases).
A worker with nothing left to claim waits while others' trials run, so whichever machine is left runs the retries.
Trials get SIGTERM when their worker dies.
A sweep value holding a secret is refused before anything is written (Optuna's journal and W&B's files would keep
it in clear). Bookkeeping is in :mod:`dsum.sweep.trials`, the search space in :mod:`dsum.sweep.search_space`;
every name this module had before they were split off still imports from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from dsum.constants import MONITOR
from dsum.infra.files import atomic_write_json
from dsum.infra.log import note, warn
from dsum.infra.secrets import redact, redact_text, refuse_secret_values
from dsum.sweep import pruning
from dsum.sweep.search_space import check_bayes_space, grid_combinations, suggest_param
from dsum.sweep.spec import load_sweep, sample_params, validate_sweep
from dsum.sweep.summary import TRIAL_RECORDS, evaluated_version, record_metric, summarize, sweep_dir_for, trial_record
from dsum.sweep.trials import (
    GRID_ATTR, HEARTBEAT_ATTR, HEARTBEAT_SECONDS, HOST_ATTR, PARAMS_ATTR, PID_ATTR, PID_STARTED_ATTR, REQUEUED_ATTR,
    RETRY_ATTR, RETRY_OF_ATTR, RUN_ID_ATTR, SKIPPED_ATTR, STALE_AFTER_SECONDS, STATE_ATTR, TRIAL_PID_ATTR,
    TRIAL_STARTED_ATTR, Claim, Outcome, agent_command, display_url, is_stale, local_study_id, mark_record_failed,
    process_started, stop_trial_process, storage_url,
)
# Names defined here before trials.py and search_space.py were split off.
from dsum.sweep.search_space import BAYES_FLOATS, BAYES_OTHERS  # noqa: F401
from dsum.sweep.trials import SEARCH_KEYS, STORAGE_FILE  # noqa: F401
from dsum.sweep.wandb_backend import SWEEP_DIR_ENV, sweep_name
from dsum.sweep.workers import cpu_threads_env, die_with_parent, gpu_groups, visible_gpus

LOCK_FILE = ".local_sweep.lock"
INTERRUPT_GRACE_SECONDS = 60.0
MAX_TRIAL_RETRIES = 2  # times a trial whose worker died is queued again
RECORDED_ATTR = "dsum_recorded"  # trial user attribute: it wrote a run record (the summary lists it)
# A machine's name (default: its host name), its heartbeats' period, and the heartbeat age past which another
# machine's running trials count as stale (seconds).
HOST_ENV = "DSUM_SWEEP_HOST"
HEARTBEAT_ENV = "DSUM_SWEEP_HEARTBEAT_SECONDS"
STALE_AFTER_ENV = "DSUM_SWEEP_STALE_AFTER_SECONDS"
FOLLOW_SECONDS = 5.0  # the longest a worker waits between looks at the trials other workers still run


class SweepStopped(SystemExit):
    """The sweep stopped before its budget: too many failed trials in a row, or interrupted."""


def has_record(run_dir: Path) -> bool:
    """Whether a trial's run record (``run.json`` / ``validate.json``) is in ``run_dir``."""
    return any((run_dir / name).is_file() for name in TRIAL_RECORDS)


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from environment variable ``name``, else ``default`` (ValueError if not)."""
    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={text!r}: expected a positive number of seconds")
    return value


@contextmanager
def database_lock(engine: Any, name: str) -> Iterator[None]:
    """Hold PostgreSQL advisory lock ``name`` (every machine on the database waits for it); elsewhere, nothing."""
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def open_shared_storage(url: str) -> optuna.storages.BaseStorage:
    """:func:`dsum.sweep.pruning.open_storage`, with Optuna's tables created by one machine at a time on
    PostgreSQL (two machines creating them at once in a new database collide)."""
    if not url.startswith("postgresql"):
        return pruning.open_storage(url)
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with database_lock(engine, "dsum.sweep: optuna tables"):
            return pruning.open_storage(url)
    finally:
        engine.dispose()


def local_worker_command(sweep_file: str | Path, count: int | None, storage: str | None,
                         gpus_per_worker: int = 1) -> list[str]:
    """The argv of one local worker process (``parallel --engine local`` starts several)."""
    command = [sys.executable, "-m", "dsum.sweep", "local", str(sweep_file)]
    if count:
        command += ["--count", str(count)]
    if storage:
        command += ["--storage", storage]
    if gpus_per_worker != 1:
        command += ["--gpus_per_worker", str(gpus_per_worker)]
    return command


class LocalSweep:
    """One invocation of ``local``: a study, K worker threads, each running one trial process at a time."""

    # dsum.sweep.inprocess.InProcessPool (long-lived decoding workers, fork servers), or None: a fresh process each.
    in_process: Any = None

    def __init__(self, sweep_file: str | Path, count: int | None, workers: int, storage: str | None,
                 max_consecutive_failures: int, gpus_per_worker: int = 1) -> None:
        limits = {"count": count, "workers": workers, "max_consecutive_failures": max_consecutive_failures}
        for flag, value in limits.items():
            if value is not None and value < 1:
                raise ValueError(f"--{flag} must be at least 1, got {value}")
        self.sweep_file = Path(sweep_file)
        self.config = load_sweep(sweep_file)
        # Before anything is written: Optuna's journal and W&B's files would hold a secret value in clear.
        refuse_secret_values(self.config, str(sweep_file))
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
        self.metric: str = metric.get("name", MONITOR)
        self.goal: str = metric.get("goal", "maximize")
        self.name = sweep_name(self.config, sweep_file)
        self.study_id = local_study_id(sweep_file, self.config)
        self.sweep_dir = sweep_dir_for(self.name).resolve()
        self.storage_url = storage_url(storage, self.sweep_dir)
        self.count, self.workers, self.max_failures = count, workers, max_consecutive_failures
        self.run_cap: int | None = self.config.get("run_cap")
        self.host, self.pid, self.pid_started = (os.environ.get(HOST_ENV) or socket.gethostname(), os.getpid(),
                                                 process_started())
        self.heartbeat_seconds = env_seconds(HEARTBEAT_ENV, HEARTBEAT_SECONDS)
        self.stale_after = env_seconds(STALE_AFTER_ENV, STALE_AFTER_SECONDS)
        if self.stale_after <= self.heartbeat_seconds:
            raise ValueError(f"{STALE_AFTER_ENV}={self.stale_after:g} must exceed {HEARTBEAT_ENV}="
                             f"{self.heartbeat_seconds:g}: live trials would count as stale")
        self.gpus = gpu_groups(visible_gpus(), workers, gpus_per_worker)  # CUDA_VISIBLE_DEVICES per slot
        self.rng = random.Random()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.interrupted = False
        self.stop_reason: str | None = None
        self.claimed = 0
        self.failures_in_a_row = 0
        self.finished = 0  # trials this invocation ran to an end (any state), and how many of them failed
        self.failed = 0
        self.last_failed_log: Path | None = None
        self.running: dict[int, subprocess.Popen] = {}
        # Trials this process claimed and has not finished: _beat records their heartbeats, from claim to end.
        self.held: dict[int, optuna.Trial] = {}
        self.ended = threading.Event()
        self.errors: list[BaseException] = []
        for sub in ("runs", "logs"):
            (self.sweep_dir / sub).mkdir(parents=True, exist_ok=True)
        self.storage = open_shared_storage(self.storage_url)
        self.study = self._open_study()

    @contextmanager
    def _claim_lock(self) -> Iterator[None]:
        """Serialise study set-up and trial claims between this process's threads, this machine's other workers
        and, on PostgreSQL, every machine sharing the study (so run_cap holds and the grid is queued once)."""
        with (self.lock, FileLock(self.sweep_dir / LOCK_FILE),
              database_lock(getattr(self.storage, "engine", None), f"dsum.sweep: {self.study_id}")):
            yield

    def _open_study(self) -> optuna.Study:
        if self.method == "bayes":
            with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
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

    def _others_running(self, trials: list[optuna.trial.FrozenTrial]) -> list[str]:
        """``host:pid`` of the workers other than this process that still run a trial of the study."""
        return [f"{t.user_attrs.get(HOST_ATTR, '?')}:{t.user_attrs.get(PID_ATTR, '?')}" for t in trials
                if t.state == TrialState.RUNNING
                and (t.user_attrs.get(HOST_ATTR), t.user_attrs.get(PID_ATTR)) != (self.host, self.pid)]

    def _fail_stale(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        """Settle every RUNNING trial whose worker is gone: stop its process (so ``--workers`` holds), take its result
        if it finished, else fail it and queue its parameters again. Returns whether any trial was settled."""
        now = time.time()
        study_id = self.storage.get_study_id_from_name(self.study_id)
        settled = False
        for trial in trials:
            if trial.state != TrialState.RUNNING or not is_stale(trial, now, self.host, self.stale_after):
                continue
            settled = True
            attrs = trial.user_attrs
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            owner = f"{attrs.get(HOST_ATTR, '?')}:{attrs.get(PID_ATTR, '?')}"
            run_id = attrs.get(RUN_ID_ATTR, "")
            if attrs.get(HOST_ATTR) == self.host and TRIAL_PID_ATTR in attrs:
                stop_trial_process(int(attrs[TRIAL_PID_ATTR]), attrs.get(TRIAL_STARTED_ATTR))
            run_dir = Path(attrs["run_dir"]) if attrs.get("run_dir") else None
            outcome = self._outcome(None, run_dir, 0.0, dead_worker=True) if run_dir else None
            try:
                if outcome is not None and outcome.state != TrialState.FAIL:
                    for key, value in {STATE_ATTR: outcome.label, "metric": outcome.value}.items():
                        if value is not None:
                            self.storage.set_trial_user_attr(trial_id, key, value)
                    self.study.tell(trial.number, outcome.value if outcome.state == TrialState.COMPLETE else None,
                                    state=outcome.state, skip_if_finished=True)
                    print(f"dsum: trial {trial.number} {run_id} {outcome.label} (its worker {owner} died after "
                          "the trial ended)", flush=True)
                    continue
                params = attrs.get(PARAMS_ATTR)
                attempt = int(attrs.get(RETRY_ATTR, 0))
                retry = params is not None and attempt < MAX_TRIAL_RETRIES
                reason = f"worker {owner} died while it ran" + (
                    f"; re-queued (retry {attempt + 1} of {MAX_TRIAL_RETRIES})" if retry else
                    f"; not re-queued ({MAX_TRIAL_RETRIES} retries used)" if params is not None else "")
                # `interrupted` when the trial recorded it (SIGTERM from its dying worker), else `failed`.
                self.storage.set_trial_user_attr(trial_id, STATE_ATTR, outcome.label if outcome else "failed")
                self.storage.set_trial_user_attr(trial_id, "dsum_error", reason)
                self.storage.set_trial_user_attr(trial_id, REQUEUED_ATTR, retry)
                self.storage.set_trial_user_attr(trial_id, RECORDED_ATTR, run_dir is not None and has_record(run_dir))
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile
            if run_dir is not None:
                mark_record_failed(run_dir, reason)
            if retry:
                self.study.enqueue_trial(dict(params), user_attrs={
                    PARAMS_ATTR: params, RETRY_ATTR: attempt + 1, RETRY_OF_ATTR: trial.number})
            print(f"dsum: trial {trial.number} {run_id} marked failed: its worker {owner} is gone"
                  + (f"; its parameters are queued again (retry {attempt + 1} of {MAX_TRIAL_RETRIES})" if retry
                     else ""), flush=True)
        return settled

    def _claim(self) -> Claim | None:
        """Take the next trial, or None when the sweep is done (count, run_cap, grid exhausted, stopped).

        With nothing left to claim while other workers still run trials, wait for those to end: one whose worker
        dies goes stale and is queued again here, so whichever machine is left finishes the study."""
        announced = False
        while True:
            claim = self._claim_once()
            if not isinstance(claim, list):  # a list: the other workers' running trials
                return claim
            if not announced:
                note(f"dsum: waiting for the trials other workers run ({', '.join(claim)}) to end, or to go stale "
                     "and be run again here")
                announced = True
            self.stop.wait(min(self.heartbeat_seconds, FOLLOW_SECONDS))

    def _claim_once(self) -> Claim | list[str] | None:
        """One look at the study for :meth:`_claim`: a claim, None when the sweep is done, or the other workers
        (``host:pid``) whose running trials to wait for."""
        with self._claim_lock():
            if self.stop.is_set():
                return None
            if self.count is not None and self.claimed >= self.count:
                return self._done(f"--count {self.count} reached")
            trials = self.study.get_trials(deepcopy=False)
            if self._fail_stale(trials):
                trials = self.study.get_trials(deepcopy=False)  # with the retries just queued
            # A trial whose worker died and that was queued again counts once, as its retry.
            started = [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get(SKIPPED_ATTR)
                       and not t.user_attrs.get(REQUEUED_ATTR)]
            capped = self.run_cap is not None and len(started) >= self.run_cap
            exhausted = self.method == "grid" and not any(t.state == TrialState.WAITING for t in trials)
            if (capped or exhausted) and (others := self._others_running(trials)):
                return others
            if capped:
                return self._done(f"run_cap {self.run_cap} reached")
            if exhausted:
                return self._done(f"grid complete ({len(self.combos)} combinations)")
            trial = self.study.ask()
            params = trial.user_attrs.get(PARAMS_ATTR)  # a grid combination or a retry, queued with its values
            if self.method == "bayes":  # (a queued retry's values come back as TPE's fixed suggestions)
                params = {str(name): suggest_param(trial, str(name), spec)
                          for name, spec in self.config["parameters"].items()}
            elif params is None and self.method == "grid":  # another machine took the last combination first
                trial.set_user_attr(SKIPPED_ATTR, True)
                self.study.tell(trial, state=TrialState.FAIL)
                return self._done(f"grid complete ({len(self.combos)} combinations)")
            elif params is None:
                params = sample_params(self.config, self.rng)
            run_id = f"t{trial.number:04d}-{secrets.token_hex(3)}"
            for key, value in {PARAMS_ATTR: params, RUN_ID_ATTR: run_id, HOST_ATTR: self.host, PID_ATTR: self.pid,
                               PID_STARTED_ATTR: self.pid_started, HEARTBEAT_ATTR: time.time()}.items():
                trial.set_user_attr(key, value)
            self.claimed += 1
            self.held[trial.number] = trial
            return Claim(trial, dict(params), run_id)

    def _done(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

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
        if self.gpus[slot % len(self.gpus)] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return {**env, **cpu_threads_env(self.workers)}

    def _run_trial(self, claim: Claim, slot: int) -> Outcome:
        from wandb.sdk.lib.config_util import save_config_file_from_dict

        run_dir = self.sweep_dir / "runs" / claim.run_id
        log_path = self.sweep_dir / "logs" / f"{claim.run_id}.log"
        param_dir = self.sweep_dir / "wandb" / f"sweep-{self.study_id}"
        param_path = param_dir / f"config-{claim.run_id}.yaml"
        json_path = param_dir / f"config-{claim.run_id}.json"
        save_config_file_from_dict(str(param_path), {name: {"value": value} for name, value in claim.params.items()})
        command, wants_json = agent_command(self.config, claim.params, json_path)
        if wants_json:
            json_path.write_text(json.dumps(claim.params), encoding="utf-8")
        claim.trial.set_user_attr("log_file", str(log_path))
        claim.trial.set_user_attr("run_dir", str(run_dir))
        env = self._trial_env(claim, param_path, slot)
        started = time.monotonic()
        code: int | None = None
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"dsum: trial {claim.number} run {claim.run_id}: {redact_text(shlex.join(command))}\n")
            log.flush()
            if self.in_process is not None and self.in_process.takes(command):  # validate/test: the slot's worker
                code = self.in_process.run_claim(self, claim, slot, command, env, log_path)
                return self._outcome(code, run_dir, time.monotonic() - started)
            try:
                # The trial gets SIGTERM when its worker dies (it saves last.ckpt and records `interrupted`):
                # a killed driver leaves no orphan running beside the next driver's trials.
                if self.in_process is not None and self.in_process.forks(command):  # fit: a fork, imports done
                    process = self.in_process.fork(slot, command, env, log_path)
                else:
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=env, preexec_fn=die_with_parent)  # noqa: PLW1509 (async-signal-safe)
            except OSError as error:
                log.write(f"dsum: cannot start the trial: {error}\n")
            else:
                self.running[claim.number] = process
                try:
                    claim.trial.set_user_attr(TRIAL_PID_ATTR, process.pid)
                    claim.trial.set_user_attr(TRIAL_STARTED_ATTR, process_started(process.pid))
                except Exception as error:  # noqa: BLE001 (a storage hiccup must not orphan the trial process)
                    warn(f"dsum: trial {claim.number}: its pid was not recorded ({error})")
                try:
                    code = process.wait()  # (its heartbeats: _beat)
                finally:
                    self.running.pop(claim.number, None)
        return self._outcome(code, run_dir, time.monotonic() - started)

    def _beat(self) -> None:
        """Record a heartbeat on every trial this process holds, every ``$DSUM_SWEEP_HEARTBEAT_SECONDS``, until the
        sweep ends: from a thread of its own, so a slow trial start never makes a claimed trial look stale."""
        while not self.ended.wait(self.heartbeat_seconds):
            for number, trial in list(self.held.items()):
                try:
                    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
                except optuna.exceptions.UpdateFinishedTrialError:
                    self.held.pop(number, None)  # finished meanwhile
                except Exception as error:  # noqa: BLE001 (a storage hiccup must not stop the sweep)
                    warn(f"dsum: trial {number}: heartbeat not recorded ({error})")

    def _outcome(self, code: int | None, run_dir: Path, seconds: float, dead_worker: bool = False) -> Outcome:
        """How a trial ended, from its exit code and run record (``dead_worker``: the exit code is unknown
        because the worker that waited for it died; the record alone decides)."""
        try:
            record = trial_record(run_dir)
        except (OSError, ValueError):  # a record cut short by a dead process
            record = None
        status = (record or {}).get("status")
        if record is None:
            return Outcome(TrialState.FAIL, "failed", None, seconds, code,
                           f"exit code {code}, no run record in {run_dir}")
        if (code != 0 and not dead_worker) or status in ("failed", "interrupted", "running"):
            label = "interrupted" if status == "interrupted" else "failed"
            history = record.get("history") or []
            error = history[-1].get("error") if history else None
            return Outcome(TrialState.FAIL, label, None, seconds, code,
                           f"exit code {code}, run record {status!r}" + (f": {error}" if error else ""))
        value = record_metric(record, self.metric, self.goal)
        if status == "pruned":
            return Outcome(TrialState.PRUNED, "pruned", value, seconds, code)
        if status != "completed":
            return Outcome(TrialState.FAIL, "failed", None, seconds, code, f"run record status {status!r}")
        if value is None or not math.isfinite(value):
            return Outcome(TrialState.FAIL, "failed", None, seconds, code,
                           f"{self.metric} was never recorded (value {value})")
        return Outcome(TrialState.COMPLETE, "completed", value, seconds, code)

    def _trial_rows(self) -> list[dict[str, Any]]:
        """The summary's rows, from the study (so every machine sharing it writes the same summary): each trial
        that wrote a run record, or still runs; its exported model and tuned version where its record is readable."""
        rows = []
        for trial in sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number):
            attrs = trial.user_attrs
            run_dir = Path(attrs["run_dir"]) if attrs.get("run_dir") else None
            readable = run_dir is not None and has_record(run_dir)
            running = trial.state == TrialState.RUNNING
            # (a trial of a study begun before RECORDED_ATTR existed: its record, where it can be read)
            if RUN_ID_ATTR not in attrs or not (running or attrs.get(RECORDED_ATTR, readable)):
                continue
            try:
                record = trial_record(run_dir) if readable else None
            except (OSError, ValueError):  # a record being written
                record = None
            rows.append({
                "run_id": attrs[RUN_ID_ATTR], "sweep_id": self.study_id,
                "state": "running" if running else attrs.get(STATE_ATTR) or trial.state.name.lower(),
                "metric": attrs.get("metric", trial.value), "params": attrs.get(PARAMS_ATTR) or {},
                "run_dir": attrs.get("run_dir"), "best_model": (record or {}).get("best_model"),
                "started_at": trial.datetime_start.isoformat() if trial.datetime_start else None,
                "model_version": evaluated_version(run_dir) if readable else None,
            })
        return rows

    def _retries(self) -> list[dict[str, Any]]:
        """Trials whose worker died (``REQUEUED_ATTR``), and what became of their parameters (for the summary)."""
        trials = self.study.get_trials(deepcopy=False)
        retried_by = {t.user_attrs[RETRY_OF_ATTR]: t for t in trials if RETRY_OF_ATTR in t.user_attrs}
        rows = []
        for trial in sorted((t for t in trials if REQUEUED_ATTR in t.user_attrs), key=lambda t: t.number):
            retry = retried_by.get(trial.number)
            rows.append({
                "trial": trial.number, "run_id": trial.user_attrs.get(RUN_ID_ATTR),
                "params": redact(trial.user_attrs.get(PARAMS_ATTR)), "reason": trial.user_attrs.get("dsum_error"),
                "retried_as": None if retry is None else {
                    "trial": retry.number, "run_id": retry.user_attrs.get(RUN_ID_ATTR),
                    "attempt": retry.user_attrs.get(RETRY_ATTR),
                    "state": retry.user_attrs.get(STATE_ATTR) or retry.state.name.lower()},
            })
        return rows

    def _finish(self, claim: Claim, outcome: Outcome) -> None:
        trial = claim.trial
        log_path = self.sweep_dir / "logs" / f"{claim.run_id}.log"
        for key, value in {STATE_ATTR: outcome.label, "returncode": outcome.returncode,
                           "seconds": round(outcome.seconds, 2), "metric": outcome.value,
                           "dsum_error": outcome.reason,
                           RECORDED_ATTR: has_record(self.sweep_dir / "runs" / claim.run_id)}.items():
            if value is not None:
                trial.set_user_attr(key, value)
        self.study.tell(trial, outcome.value if outcome.state == TrialState.COMPLETE else None, state=outcome.state)
        value = "-" if outcome.value is None else f"{outcome.value:.4f}"
        attempt = trial.user_attrs.get(RETRY_ATTR)
        retry = f" (retry {attempt} of trial {trial.user_attrs.get(RETRY_OF_ATTR)})" if attempt else ""
        line = (f"dsum: trial {claim.number} {claim.run_id}{retry} {outcome.label} {self.metric}={value} "
                f"{json.dumps(redact(claim.params), ensure_ascii=False, default=str)} {outcome.seconds:.1f}s")
        if outcome.state == TrialState.FAIL:
            line += f" ({outcome.reason}; log {log_path})"
        print(line, flush=True)
        with self.lock:
            self.finished += 1
            if outcome.state != TrialState.FAIL:
                self.failures_in_a_row = 0
                return
            self.failed += 1
            self.last_failed_log = log_path
            if not self.interrupted:
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
                    try:
                        outcome = self._run_trial(claim, slot)
                    except BaseException:
                        self.study.tell(claim.trial, state=TrialState.FAIL, skip_if_finished=True)
                        raise
                    self._finish(claim, outcome)
                finally:
                    self.held.pop(claim.number, None)
        except BaseException as error:  # surface it in the main thread; stop the other workers
            self.errors.append(error)
            self.stop.set()

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
        heartbeats = threading.Thread(target=self._beat, name="dsum-local-heartbeats", daemon=True)
        heartbeats.start()
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
                note("dsum: interrupted; waiting for running trials to record their state")
                deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
                while any(p.poll() is None for p in list(self.running.values())) and time.monotonic() < deadline:
                    time.sleep(0.5)
                self._signal_children(signal.SIGTERM)
                for thread in threads:
                    thread.join()
        finally:
            self.ended.set()
            heartbeats.join()
            if on_main:
                signal.signal(signal.SIGTERM, previous)
        if self.errors:
            raise self.errors[0]
        # An interruption, or too many failures in a row, already says why the sweep stopped.
        stopped = self.interrupted or self.failures_in_a_row >= self.max_failures
        all_failed = not stopped and self.finished > 0 and self.failed == self.finished  # (a value all trials share)
        if all_failed:
            self.stop_reason = (f"all {self.finished} trial{'s' * (self.finished != 1)} failed; last trial's log: "
                                f"{self.last_failed_log}")
        summary = summarize(self.sweep_dir, self.study_id, self.metric, self.goal, trial_rows=self._trial_rows())
        summary.update(storage=display_url(self.storage_url), stop_reason=self.stop_reason, retries=self._retries())
        atomic_write_json(self.sweep_dir / f"{self.study_id}_summary.json", redact(summary))
        best = summary["best_run_id"]
        print(f"dsum: {self.sweep_dir / (self.study_id + '_summary.json')}: "
              + (f"best {best} {self.metric}={summary['best_metric']:.4f}" if best else "no completed trial")
              + (f"; stopped: {self.stop_reason}" if self.stop_reason else ""), flush=True)
        if stopped or all_failed:
            raise SweepStopped(f"dsum: sweep {self.name} stopped: {self.stop_reason}")
        return summary


def run_local(sweep_file: str | Path, count: int | None = None, workers: int = 1, storage: str | None = None,
              max_consecutive_failures: int = 3, gpus_per_worker: int = 1, in_process: bool | None = None
              ) -> dict[str, Any]:
    """Run a sweep YAML on Optuna without a W&B server; returns the sweep summary (see ``summarize``). The
    arguments are ``python -m dsum.sweep local``'s (:func:`dsum.sweep.__main__.local`).

    Raises:
        SweepSpecError: the YAML is invalid, or asks for what the local engine cannot do exactly.
        SweepStopped: every trial failed, too many failures in a row, or interrupted (after writing the summary).
    """
    from dsum.sweep.inprocess import run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = LocalSweep(sweep_file, count, workers, storage, max_consecutive_failures, gpus_per_worker)
    return run_sweep(sweep, in_process)  # validate/test trials in-process unless opted out
