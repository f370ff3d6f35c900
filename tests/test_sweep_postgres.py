"""Sweeps over several machines: two ``python -m dsum.sweep local`` processes, in separate working directories
(two "machines"), share one study on a real PostgreSQL server (``--storage postgresql+psycopg2://...``).

The server is a throwaway one started by :func:`postgres_server` (Debian's ``postgresql`` package: ``initdb`` and
``pg_ctl``); the tests skip only when those binaries cannot be found. Trials are the fast stand-in programs of
``tests.test_sweep_local``; each "machine" gets its own host name (``DSUM_SWEEP_HOST``), so a dead machine is found
by its heartbeats, as across real machines, with short heartbeats (``DSUM_SWEEP_HEARTBEAT_SECONDS``,
``DSUM_SWEEP_STALE_AFTER_SECONDS``).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dsum.registry import current_best, versions
from dsum.sweep.local import HOST_ATTR, PARAMS_ATTR, REQUEUED_ATTR, RUN_ID_ATTR, STATE_ATTR, local_study_id
from dsum.sweep.summary import trial_record
from tests.conftest import REPO
from tests.test_sweep_local import GRID4, SLOW_PROGRAM, write_sweep

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is needed to reach PostgreSQL (pip install -e '.[dev]')")

GRID = {"learning_rate": {"values": [0.1, 0.2, 0.3]}, "num_beams": {"values": [1, 2]}}
GRID_ORDER = [(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2), (0.3, 1), (0.3, 2)]
# Heartbeats every 0.3 s; a machine silent for 3 s is gone.
FAST_HEARTBEATS = {"DSUM_SWEEP_HEARTBEAT_SECONDS": "0.3", "DSUM_SWEEP_STALE_AFTER_SECONDS": "3"}

# Works DSUM_TEST_TRIAL_SECONDS (metric = lr x 100 + num_beams), and exports a model the registry accepts
# (weights, the `.complete` marker) with a config.yaml naming its validation file, as main.py's fit does.
EXPORTING_PROGRAM = '''
import json, os, time
from pathlib import Path
import numpy as np
import yaml
from safetensors.numpy import save_file

entries = yaml.safe_load(open(os.environ["WANDB_SWEEP_PARAM_PATH"], encoding="utf-8"))
entries.pop("wandb_version", None)
params = {name: entry["value"] for name, entry in entries.items()}
run_dir = Path(os.environ["DSUM_SWEEP_DIR"]) / "runs" / os.environ["WANDB_RUN_ID"]
export = run_dir / "best_model"
export.mkdir(parents=True, exist_ok=True)
time.sleep(float(os.environ.get("DSUM_TEST_TRIAL_SECONDS", "0")))
save_file({"w": np.full(2, params["learning_rate"], dtype=np.float32)}, str(export / "model.safetensors"))
(export / "config.json").write_text("{}")
(export / ".complete").touch()
config = {"data": {"val_file": os.environ["DSUM_TEST_VAL_FILE"]}, "model": {"class_path": "fake.Model"}}
(run_dir / "config.yaml").write_text(yaml.safe_dump(config))
metric = params["learning_rate"] * 100 + params["num_beams"]
record = {
    "run_id": os.environ["WANDB_RUN_ID"], "status": "completed", "monitor": "val/rouge_mean",
    "best_metric": metric, "metrics_history": [{"epoch": 0, "val/rouge_mean": metric}],
    "sweep_params": params, "wandb": {"sweep_id": os.environ["WANDB_SWEEP_ID"], "mode": "offline"},
    "history": [{"stage": "fit", "status": "completed", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}],
    "best_model": str(export), "config": str(run_dir / "config.yaml"), "run_dir": str(run_dir),
}
(run_dir / "run.json").write_text(json.dumps(record))
'''


# ------------------------------------------------------------------------------------------- the server
def server_binary(name: str) -> str | None:
    """``name`` on PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0, reverse=True)
    return str(candidates[0]) if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication, no fsync), as
    ``postgresql+psycopg2://postgres@127.0.0.1:<port>``; stopped and deleted afterwards. The server refuses to
    run as root, so as root it runs as the ``postgres`` user."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    root = Path(tempfile.mkdtemp(prefix="dsum-postgres-"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_server_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    started = subprocess.run([*as_server_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w",
                              "-t", "60", "-o", options, "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{log}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_server_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the server (each test its own study tables), as an Optuna storage URL."""
    name = f"dsum_{secrets.token_hex(4)}"
    connection = psycopg2.connect(host="127.0.0.1", port=postgres_server.rsplit(":", 1)[1], user="postgres",
                                  dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return f"{postgres_server}/{name}"


# ------------------------------------------------------------------------------------------- the machines
class Machine:
    """One "machine": its own working directory (outputs/ under it) and host name, one sweep process."""

    def __init__(self, root: Path, name: str) -> None:
        self.name, self.cwd = name, root / name
        self.cwd.mkdir()
        self.log = self.cwd / "sweep.log"
        self.process: subprocess.Popen | None = None

    def start(self, sweep: Path, url: str, *args: str, **env: str) -> Machine:
        """``python -m dsum.sweep local <sweep> --storage <url>`` in its own process group."""
        environment = {k: v for k, v in os.environ.items() if k != "DSUM_SWEEP_DIR"}
        with open(self.log, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dsum.sweep", "local", str(sweep), "--storage", url, *args], cwd=self.cwd,
                env={**environment, "PYTHONPATH": str(REPO), "DSUM_SWEEP_HOST": self.name, **FAST_HEARTBEATS, **env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float = 120) -> str:
        assert self.process is not None
        self.process.wait(timeout=timeout)
        return self.log.read_text()

    def kill_9(self) -> None:
        """SIGKILL the whole process group: the sweep and its trial, as a machine that loses power."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    @property
    def sweep_dir(self) -> Path:
        return self.cwd / "outputs" / "sweep_fake"

    def records(self) -> list[dict]:
        runs = self.sweep_dir / "runs"
        found = [trial_record(d) for d in sorted(runs.iterdir())] if runs.is_dir() else []
        return [r for r in found if r is not None]

    def summary(self, sweep: Path) -> dict:
        return json.loads((self.sweep_dir / f"{local_study_id(sweep)}_summary.json").read_text())


def shared_sweep(tmp_path: Path, parameters: dict, program: str, **extra) -> Path:
    """The sweep YAML and its program on the file system both machines see (the same study id on both)."""
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    return write_sweep(shared, parameters, program=program, **extra)


def load(url: str, sweep: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=local_study_id(sweep), storage=url)
    return sorted(study.get_trials(), key=lambda t: t.number)


def combination(trial: optuna.trial.FrozenTrial) -> tuple:
    return tuple(trial.user_attrs[PARAMS_ATTR].values())


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------- the tests
def test_run_cap_holds_across_two_machines(tmp_path, postgres_url) -> None:
    parameters = {"learning_rate": {"distribution": "uniform", "min": 0.1, "max": 0.5}, "num_beams": {"value": 1}}
    sweep = shared_sweep(tmp_path, parameters, SLOW_PROGRAM, method="random", run_cap=4)
    machines = [Machine(tmp_path, name).start(sweep, postgres_url, "--workers", "2",
                                              DSUM_TEST_TRIAL_SECONDS="0.3") for name in ("machine-a", "machine-b")]
    outputs = [m.wait() for m in machines]

    assert [m.process.returncode for m in machines] == [0, 0], outputs
    assert all("run_cap 4 reached" in out for out in outputs), outputs
    trials = load(postgres_url, sweep)
    ran = [t for t in trials if t.state != TrialState.FAIL]
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    records = [r for m in machines for r in m.records()]
    assert len(records) == 4 and {r["status"] for r in records} == {"completed"}
    assert {t.user_attrs[RUN_ID_ATTR] for t in ran} == {r["run_id"] for r in records}


def test_a_grid_shared_by_two_machines_runs_once_and_both_summaries_agree(tmp_path, postgres_url) -> None:
    """Each combination runs exactly once, on one machine or the other; each machine's summary (written from the
    shared study) agrees; both promote into one registry on a shared file system, and only one version lands."""
    sweep = shared_sweep(tmp_path, GRID, EXPORTING_PROGRAM)
    (tmp_path / "val.csv").write_text("id,dialogue,summary\n1,a,b\n")
    (tmp_path / "shared" / "models").mkdir()
    machines = [Machine(tmp_path, name) for name in ("machine-a", "machine-b")]
    for machine in machines:  # one registry on the shared file system (models/registry under each cwd)
        (machine.cwd / "models").symlink_to(tmp_path / "shared" / "models")
    for machine in machines:
        machine.start(sweep, postgres_url, DSUM_TEST_TRIAL_SECONDS="0.3", DSUM_TEST_VAL_FILE=str(tmp_path / "val.csv"))
    outputs = [m.wait() for m in machines]

    assert [m.process.returncode for m in machines] == [0, 0], outputs
    trials = load(postgres_url, sweep)
    assert sorted(combination(t) for t in trials) == GRID_ORDER  # queued once, even by two machines at once
    assert all(t.state == TrialState.COMPLETE for t in trials)
    records = [r for m in machines for r in m.records()]
    assert sorted((r["sweep_params"]["learning_rate"], r["sweep_params"]["num_beams"]) for r in records) == GRID_ORDER
    assert {t.user_attrs[RUN_ID_ATTR] for t in trials} == {r["run_id"] for r in records}

    first, second = (m.summary(sweep) for m in machines)
    same = ("states", "runs", "best_run_id", "best_metric", "best_params", "best_model_path", "metric_stats",
            "retries", "registry_key", "registry_version")
    assert {k: first[k] for k in same} == {k: second[k] for k in same}
    assert first["states"] == {"completed": 6} and first["best_params"] == {"learning_rate": 0.3, "num_beams": 2}
    csvs = [(m.sweep_dir / f"{local_study_id(sweep)}_runs.csv").read_text() for m in machines]
    assert csvs[0] == csvs[1] and csvs[0].count("\n") == 7
    # One promotion between them, under the registry's lock: version 1 is the best trial's model, and no v2.
    key_dir = tmp_path / "shared" / "models" / "registry" / first["registry_key"]
    assert versions(key_dir) == [1] and first["registry_version"] == 1
    assert sorted(s["promoted"] for s in (first, second)) == [False, True]
    assert current_best(key_dir)["run_id"] == first["best_run_id"]
    assert {t.user_attrs[HOST_ATTR] for t in trials} == {"machine-a", "machine-b"}, "one machine ran everything"


def test_a_machine_killed_mid_trial_is_found_by_its_heartbeats_and_the_other_finishes(tmp_path, postgres_url) -> None:
    sweep = shared_sweep(tmp_path, GRID4, SLOW_PROGRAM)
    a, b = Machine(tmp_path, "machine-a"), Machine(tmp_path, "machine-b")
    # Machine A takes the first combination and works on it for a minute; it is killed (sweep and trial) mid-trial.
    a.start(sweep, postgres_url, DSUM_TEST_TRIAL_SECONDS="60")
    wait_until(lambda: any(r["status"] == "running" for r in a.records()), "machine A's trial to start")
    a.kill_9()
    [killed] = a.records()
    b.start(sweep, postgres_url, DSUM_TEST_TRIAL_SECONDS="0.2")
    out = b.wait()

    assert b.process.returncode == 0, out
    # B ran the other three, waited for A's trial until A's heartbeats were 3 s old, failed it and ran it again.
    assert f"{killed['run_id']} marked failed: its worker machine-a:{a.process.pid} is gone" in out, out
    trials = load(postgres_url, sweep)
    dead = next(t for t in trials if t.user_attrs[RUN_ID_ATTR] == killed["run_id"])
    assert dead.state == TrialState.FAIL and dead.user_attrs[STATE_ATTR] == "failed"
    assert dead.user_attrs[REQUEUED_ATTR] is True and "died" in dead.user_attrs["dsum_error"]
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(combination(t) for t in completed) == [(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2)]  # none lost or twice
    assert all(t.user_attrs[HOST_ATTR] == "machine-b" for t in completed)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # A's record (on the shared file system) no longer says `running`.
    assert trial_record(a.sweep_dir / "runs" / killed["run_id"])["status"] == "failed"
    summary = b.summary(sweep)
    assert summary["states"] == {"completed": 4, "failed": 1} and summary["best_metric"] == pytest.approx(20.0)
    assert [(r["run_id"], r["retried_as"]["state"]) for r in summary["retries"]] == [(killed["run_id"], "completed")]


@pytest.mark.parametrize(("env", "message"), [
    ({"DSUM_SWEEP_HEARTBEAT_SECONDS": "soon"}, "DSUM_SWEEP_HEARTBEAT_SECONDS='soon': expected a positive number"),
    ({"DSUM_SWEEP_STALE_AFTER_SECONDS": "-1"}, "DSUM_SWEEP_STALE_AFTER_SECONDS='-1': expected a positive number"),
    ({"DSUM_SWEEP_HEARTBEAT_SECONDS": "5", "DSUM_SWEEP_STALE_AFTER_SECONDS": "5"},
     "DSUM_SWEEP_STALE_AFTER_SECONDS=5 must exceed DSUM_SWEEP_HEARTBEAT_SECONDS=5"),
])
def test_bad_heartbeat_settings_are_refused_naming_the_variable(tmp_path, monkeypatch, env, message) -> None:
    from dsum.sweep.local import run_local

    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        run_local(write_sweep(tmp_path, GRID))
    assert "\n" not in str(error.value)
