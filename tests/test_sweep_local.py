"""`python -m dsum.sweep local`: W&B sweep YAMLs on Optuna, offline, trials launched as `wandb agent` would.

One test runs the real quick sweep (tiny models, main.py); the others drive the engine with stand-in programs
(named main.py, as the sweep schema wants) that write a run record the way RunRecord does, to stay fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from transformers import AutoModelForSeq2SeqLM

from dsum.sweep import pruning
from dsum.sweep.local import (
    GRID_ATTR, HOST_ATTR, PARAMS_ATTR, PID_ATTR, RUN_ID_ATTR, STATE_ATTR, SweepStopped, agent_command,
    check_bayes_space, grid_combinations, local_study_id, local_worker_command, run_local, storage_url,
)
from dsum.registry import current_best
from dsum.sweep.pruning import WandbHyperbandPruner, hyperband_bands
from dsum.sweep.spec import SweepSpecError, load_sweep
from dsum.sweep.summary import trial_record
from tests.conftest import REPO, SAMPLE

# Writes a run record like RunRecord: metric = learning_rate x 100; `data.source_prefix: crash` crashes.
FAKE_PROGRAM = '''
import json, os, sys, time
from pathlib import Path
import yaml

entries = yaml.safe_load(open(os.environ["WANDB_SWEEP_PARAM_PATH"], encoding="utf-8"))
entries.pop("wandb_version", None)
params = {name: entry["value"] for name, entry in entries.items()}
if params.get("data.source_prefix") == "crash":
    sys.exit("Traceback: simulated crash in " + os.environ["WANDB_RUN_ID"])
run_dir = Path(os.environ["DSUM_SWEEP_DIR"]) / "runs" / os.environ["WANDB_RUN_ID"]
run_dir.mkdir(parents=True, exist_ok=True)
metric = params["learning_rate"] * 100
record = {
    "run_id": os.environ["WANDB_RUN_ID"], "status": "completed", "monitor": "val/rouge_mean",
    "best_metric": metric, "metrics_history": [{"epoch": 0, "val/rouge_mean": metric}],
    "sweep_params": params, "wandb": {"sweep_id": os.environ["WANDB_SWEEP_ID"]},
    "history": [{"stage": "fit", "status": "completed", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}],
    "argv": sys.argv[1:], "pid": os.getpid(),
    "optuna": {k: os.environ.get(k) for k in ("DSUM_OPTUNA_STUDY", "DSUM_OPTUNA_TRIAL", "DSUM_OPTUNA_METRIC")},
}
(run_dir / "run.json").write_text(json.dumps(record))
'''

# A real Lightning fit with dsum's RunRecord and the sweep's pruning callback; val/rouge_mean = lr x 100.
LIGHTNING_PROGRAM = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + '''
import json, os
from pathlib import Path
import lightning.pytorch as L
import torch
import yaml
from dsum.callbacks.record import RunRecord
from dsum.sweep.pruning import pruning_callbacks

entries = yaml.safe_load(open(os.environ["WANDB_SWEEP_PARAM_PATH"], encoding="utf-8"))
entries.pop("wandb_version", None)
params = {name: entry["value"] for name, entry in entries.items()}
os.environ["DSUM_SWEEP_PARAMS"] = json.dumps(params)
score = params["learning_rate"] * 100


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/rouge_mean", score)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(1, 1), batch_size=1)


trainer = L.Trainer(
    default_root_dir=str(Path(os.environ["DSUM_SWEEP_DIR"]) / "runs" / os.environ["WANDB_RUN_ID"]),
    max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    callbacks=[RunRecord(), *pruning_callbacks()],
)
trainer.fit(Model())
'''


# Waits to be stopped; on SIGTERM records `interrupted` (as RunRecord does) and exits 143.
SLEEPY_PROGRAM = '''
import json, os, signal, sys, time
from pathlib import Path

run_dir = Path(os.environ["DSUM_SWEEP_DIR"]) / "runs" / os.environ["WANDB_RUN_ID"]
run_dir.mkdir(parents=True, exist_ok=True)


def write(status):
    (run_dir / "run.json").write_text(json.dumps({"run_id": os.environ["WANDB_RUN_ID"], "status": status}))


def on_sigterm(signum, frame):
    write("interrupted")
    sys.exit(143)


signal.signal(signal.SIGTERM, on_sigterm)
write("running")
(run_dir / "started").touch()
time.sleep(120)
'''


def write_sweep(tmp_path: Path, parameters: dict, program: str = FAKE_PROGRAM, **extra) -> Path:
    """A sweep YAML whose program is a stand-in main.py under tmp_path."""
    program_dir = tmp_path / "program"
    program_dir.mkdir(exist_ok=True)
    (program_dir / "main.py").write_text(program)
    sweep = {
        "name": "fake", "program": str(program_dir / "main.py"), "method": "grid",
        "metric": {"name": "val/rouge_mean", "goal": "maximize"},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "${args}"],
        "parameters": parameters, **extra,
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run from tmp_path (outputs/ and models/ land there); no inherited sweep directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSUM_SWEEP_DIR", raising=False)
    return tmp_path


def load_study(tmp_path: Path, sweep_file: Path, name: str = "fake") -> optuna.Study:
    url = storage_url(None, (tmp_path / "outputs" / f"sweep_{name}").resolve())
    return optuna.load_study(study_name=local_study_id(sweep_file), storage=pruning.open_storage(url))


def records(tmp_path: Path, name: str = "fake") -> list[dict]:
    runs = sorted((tmp_path / "outputs" / f"sweep_{name}" / "runs").iterdir())
    return [r for r in (trial_record(d) for d in runs) if r is not None]


# ------------------------------------------------------------------------------------------- the real sweep
def quick_sweep_on_the_sample(model: Path, tmp: Path, *extra: str) -> Path:
    """sweeps/quick.yaml with absolute paths, the tiny ``model``, the bundled sample, 2 train batches per trial and
    ``extra`` native arguments, written as ``tmp/quick.yaml``."""
    sweep = load_sweep(REPO / "sweeps" / "quick.yaml")
    at = sweep["command"].index("${args}")
    sweep["program"] = str(REPO / sweep["program"])
    sweep["command"][sweep["command"].index("configs/quickstart.yaml")] = str(REPO / "configs" / "quickstart.yaml")
    sweep["command"][at:at] = [
        f"--model.pretrained={model}", f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}", f"--data.test_file={SAMPLE / 'dev.csv'}",
        f"--data.predict_file={SAMPLE / 'test.csv'}", f"--data.cache_dir={tmp / 'cache'}",
        "--trainer.limit_train_batches=2", "--data.val_subset=8", "--model.generation.max_new_tokens=8",
        "--trainer.logger=false", *extra,
    ]
    path = tmp / "quick.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_quick_sweep_runs_trials_as_the_agent_and_promotes_the_best(tiny_models, in_tmp) -> None:
    path = quick_sweep_on_the_sample(tiny_models["bart"], in_tmp)

    summary = run_local(path, count=4, workers=2)

    trials = records(in_tmp, "quick")
    assert len(trials) == 4 and {r["status"] for r in trials} == {"completed"}
    assert {r["wandb"]["sweep_id"] for r in trials} == {local_study_id(path)}
    best = max(r["best_metric"] for r in trials)  # (a tiny random model may tie)
    by_run = {r["run_id"]: r for r in trials}
    assert summary["best_metric"] == best and by_run[summary["best_run_id"]]["best_metric"] == best
    assert summary["states"] == {"completed": 4}
    # Sample data: the sandbox registry, never the one real runs use.
    assert summary["sandbox"] is True and not (in_tmp / "models" / "registry").exists()
    registry = in_tmp / "models" / "sandbox" / summary["registry_key"] / "best"
    assert summary["registry_version"] == 1 and registry.resolve().name == "v1"
    assert current_best(registry.parent)["run_id"] == summary["best_run_id"]
    assert current_best(registry.parent)["metric"]["value"] == best
    exported = Path(by_run[summary["best_run_id"]]["best_model"])
    assert (registry / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()
    assert AutoModelForSeq2SeqLM.from_pretrained(registry) is not None
    # Every combination once; each trial's resolved config holds its own values.
    assert sorted((r["sweep_params"]["learning_rate"], r["sweep_params"]["num_beams"]) for r in trials) == [
        (0.001, 1), (0.001, 2), (0.003, 1), (0.003, 2)]
    for record in trials:
        params = record["sweep_params"]
        config = yaml.safe_load(Path(record["config"]).read_text())
        assert config["model"]["init_args"]["learning_rate"] == pytest.approx(params["learning_rate"])
        assert config["model"]["init_args"]["generation"]["num_beams"] == params["num_beams"]
        assert config["trainer"]["max_epochs"] == params["num_train_epochs"] == 2
        assert config["data"]["batch_size"] == params["train_batch_size"]
        assert Path(record["run_dir"]) == (in_tmp / "outputs" / "sweep_quick" / "runs" / record["run_id"]).resolve()
        assert (in_tmp / "outputs" / "sweep_quick" / "logs" / f"{record['run_id']}.log").is_file()


# ------------------------------------------------------------------------------------------- launching
def test_trial_argv_is_the_agents(tmp_path) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    config = {"program": "main.py", "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "c.yaml",
                                                "${args}", "${args_json_file}", "${envvar:DSUM_TEST_VAR}"]}
    params = {"learning_rate": 1e-3, "train_batch_size": 16, "do_sample": False, "data.source_prefix": "a b; c"}
    os.environ["DSUM_TEST_VAR"] = "from-env"
    try:
        command, wants_json = agent_command(config, params, tmp_path / "args.json")
    finally:
        del os.environ["DSUM_TEST_VAR"]
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    assert command == ["/usr/bin/env", sys.executable, "main.py", "fit", "--config", "c.yaml", *args,
                       str(tmp_path / "args.json"), "from-env"]
    assert args == ["--learning_rate=0.001", "--train_batch_size=16", "--do_sample=False",
                    "--data.source_prefix=a b; c"]
    assert wants_json
    assert local_worker_command("sweeps/quick.yaml", 2, "sqlite:///s.db") == [
        sys.executable, "-m", "dsum.sweep", "local", "sweeps/quick.yaml", "--count", "2", "--storage", "sqlite:///s.db"]


def test_grid_order_and_dedup_follow_wandb() -> None:
    config = {"parameters": {"a": {"values": [1, 1.0, 2]}, "b": {"min": 1, "max": 2},
                             "c": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.5}, "d": {"value": "x"}}}
    assert grid_combinations(config) == [
        {"a": a, "b": b, "c": c, "d": "x"} for a in (1, 2) for b in (1, 2) for c in (0.0, 0.5)]


def test_bayes_refuses_what_tpe_cannot_draw_exactly() -> None:
    config = {"parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
                             "num_beams": {"values": [1, 2], "probabilities": [0.5, 0.5]},
                             "temperature": {"distribution": "normal", "mu": 1.0, "sigma": 0.1}}}
    with pytest.raises(SweepSpecError) as error:
        check_bayes_space(config)
    assert "parameters.num_beams" in str(error.value) and "probabilities" in str(error.value)
    assert "parameters.temperature" in str(error.value) and "normal" in str(error.value)
    assert "parameters.lr" not in str(error.value)


# ------------------------------------------------------------------------------------------- grid, resume, caps
GRID = {"learning_rate": {"values": [0.1, 0.2, 0.3]}, "num_beams": {"values": [1, 2]}}
GRID_ORDER = [(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2), (0.3, 1), (0.3, 2)]


def test_grid_runs_each_combination_once_across_workers(in_tmp, capsys) -> None:
    path = write_sweep(in_tmp, GRID)
    summary = run_local(path, count=20, workers=2)

    found = records(in_tmp)
    assert sorted((r["sweep_params"]["learning_rate"], r["sweep_params"]["num_beams"]) for r in found) == GRID_ORDER
    assert summary["stop_reason"] == "grid complete (6 combinations)"
    assert summary["best_metric"] == pytest.approx(30.0) and summary["best_params"]["learning_rate"] == 0.3
    study = load_study(in_tmp, path)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    # Queued in YAML order, each run by exactly the trial that held it.
    assert [tuple(t.user_attrs[PARAMS_ATTR].values()) for t in trials] == GRID_ORDER
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    by_run = {r["run_id"]: r for r in found}
    for trial in trials:
        record = by_run[trial.user_attrs[RUN_ID_ATTR]]
        assert trial.value == pytest.approx(record["best_metric"])
        lr, beams = trial.user_attrs[PARAMS_ATTR].values()
        assert record["argv"] == ["fit", f"--learning_rate={lr}", f"--num_beams={beams}"]
        assert record["optuna"] == {"DSUM_OPTUNA_STUDY": study.study_name, "DSUM_OPTUNA_TRIAL": str(trial.number),
                                    "DSUM_OPTUNA_METRIC": "val/rouge_mean"}
    out = capsys.readouterr().out
    assert sum(" completed val/rouge_mean=" in line for line in out.splitlines()) == 6


def test_rerun_resumes_the_study_and_requeues_trials_whose_worker_died(in_tmp, capsys) -> None:
    path = write_sweep(in_tmp, GRID)
    run_local(path, count=2)
    study = load_study(in_tmp, path)
    # A worker that died mid-trial: it took the next combination, then its process vanished.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    for key, value in {HOST_ATTR: socket.gethostname(), PID_ATTR: dead.pid, RUN_ID_ATTR: "t0002-dead"}.items():
        orphan.set_user_attr(key, value)

    summary = run_local(path, count=10)

    out = capsys.readouterr().out
    assert f"trial {orphan.number} t0002-dead marked failed" in out and "resuming with 2 finished trials" in out
    assert "queued again (retry 1 of 2)" in out
    trials = sorted(load_study(in_tmp, path).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 4
    assert trials[2].user_attrs[STATE_ATTR] == "failed" and "died" in trials[2].user_attrs["dsum_error"]
    assert load_study(in_tmp, path).user_attrs[GRID_ATTR] == 6  # queued once, not again on resume
    # The dead trial's combination ran again (last, with the same values), every combination exactly once.
    retry = trials[-1]
    assert retry.user_attrs[PARAMS_ATTR] == trials[2].user_attrs[PARAMS_ATTR]
    assert retry.user_attrs["dsum_retry"] == 1 and retry.user_attrs["dsum_retry_of"] == 2
    ran = [(r["sweep_params"]["learning_rate"], r["sweep_params"]["num_beams"]) for r in records(in_tmp)]
    assert sorted(ran) == GRID_ORDER
    assert summary["states"] == {"completed": 6} and summary["stop_reason"] == "grid complete (6 combinations)"
    assert summary["retries"] == [{
        "trial": 2, "run_id": "t0002-dead", "params": {"learning_rate": 0.2, "num_beams": 1},
        "reason": trials[2].user_attrs["dsum_error"],
        "retried_as": {"trial": retry.number, "run_id": retry.user_attrs[RUN_ID_ATTR], "attempt": 1,
                       "state": "completed"}}]
    written = json.loads((in_tmp / "outputs" / "sweep_fake" / f"{study.study_name}_summary.json").read_text())
    assert written["retries"] == summary["retries"]


def test_run_cap_counts_every_trial_in_the_study(in_tmp) -> None:
    parameters = {"learning_rate": {"distribution": "uniform", "min": 0.1, "max": 0.5},
                  "num_beams": {"values": [1, 2], "probabilities": [0.25, 0.75]}}
    path = write_sweep(in_tmp, parameters, method="random", run_cap=3)
    run_local(path, count=2, workers=2)
    summary = run_local(path, count=5, workers=2)

    assert summary["stop_reason"] == "run_cap 3 reached" and summary["runs"] == 3
    params = [r["sweep_params"] for r in records(in_tmp)]
    assert all(0.1 <= p["learning_rate"] <= 0.5 and p["num_beams"] in (1, 2) for p in params)
    assert len({p["learning_rate"] for p in params}) == 3


def test_bayes_draws_wandb_distributions_with_tpe(in_tmp) -> None:
    parameters = {
        "learning_rate": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
        "weight_decay": {"distribution": "q_log_uniform_values", "min": 0.001, "max": 0.1, "q": 0.001},
        "warmup_ratio": {"distribution": "q_uniform", "min": 0.0, "max": 0.3, "q": 0.1},
        "num_beams": {"distribution": "int_uniform", "min": 1, "max": 4},
        "data.source_prefix": {"values": ["a", "b"]},
        "seed": {"value": 7},
    }
    path = write_sweep(in_tmp, parameters, method="bayes", run_cap=4)
    summary = run_local(path, workers=2)

    assert summary["states"] == {"completed": 4} and summary["stop_reason"] == "run_cap 4 reached"
    for p in (r["sweep_params"] for r in records(in_tmp)):
        assert 0.01 <= p["learning_rate"] <= 1.0 and p["seed"] == 7 and p["data.source_prefix"] in ("a", "b")
        assert round(p["weight_decay"] / 0.001) == pytest.approx(p["weight_decay"] / 0.001)
        assert min(abs(p["warmup_ratio"] - g) for g in (0.0, 0.1, 0.2, 0.3)) < 1e-9
        assert p["num_beams"] in (1, 2, 3, 4)
    trials = load_study(in_tmp, path).get_trials()
    assert all(t.distributions["learning_rate"].log and t.distributions["weight_decay"].log for t in trials)
    assert all(t.value == pytest.approx(t.user_attrs[PARAMS_ATTR]["learning_rate"] * 100) for t in trials)


def test_worker_processes_share_the_grid(in_tmp) -> None:
    path = write_sweep(in_tmp, {**GRID, "seed": {"values": [1, 2]}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen(local_worker_command(path, None, None), cwd=in_tmp, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]

    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = [json.dumps(r["sweep_params"], sort_keys=True) for r in records(in_tmp)]
    assert len(ran) == len(set(ran)) == 12
    assert all("grid complete (12 combinations)" in out for out in outputs)


def test_sigterm_interrupts_running_trials_and_records_them(in_tmp) -> None:
    path = write_sweep(in_tmp, GRID, program=SLEEPY_PROGRAM)
    worker = subprocess.Popen(local_worker_command(path, None, None), cwd=in_tmp, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    runs = in_tmp / "outputs" / "sweep_fake" / "runs"
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/started")) and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    out = worker.communicate(timeout=120)[0]

    assert worker.returncode == 1 and "stopped: interrupted (SIGTERM)" in out, out
    trials = sorted(load_study(in_tmp, path).get_trials(), key=lambda t: t.number)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs[STATE_ATTR] == "interrupted"
    assert [t.state for t in trials[1:]] == [TrialState.WAITING] * 5  # nothing new started
    assert [r["status"] for r in records(in_tmp)] == ["interrupted"]


# ------------------------------------------------------------------------------------------- failures
def test_a_crashing_trial_is_failed_and_the_sweep_goes_on(in_tmp, capsys) -> None:
    path = write_sweep(in_tmp, {"data.source_prefix": {"values": ["ok", "crash", "fine"]},
                                "learning_rate": {"value": 0.2}})
    summary = run_local(path)

    trials = sorted(load_study(in_tmp, path).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    log = Path(trials[1].user_attrs["log_file"])
    assert "simulated crash" in log.read_text()
    assert "no run record" in trials[1].user_attrs["dsum_error"]
    assert summary["states"] == {"completed": 2}
    assert "failed val/rouge_mean=- " in capsys.readouterr().out


def test_consecutive_failures_stop_the_sweep_naming_the_last_log(in_tmp) -> None:
    path = write_sweep(in_tmp, {"data.source_prefix": {"value": "crash"},
                                "learning_rate": {"values": [0.1, 0.2, 0.3, 0.4]}})
    with pytest.raises(SweepStopped) as stopped:
        run_local(path, max_consecutive_failures=2)

    trials = sorted(load_study(in_tmp, path).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    last_log = trials[1].user_attrs["log_file"]
    assert "2 trials failed in a row" in str(stopped.value.code) and last_log in str(stopped.value.code)
    assert "simulated crash" in Path(last_log).read_text()
    assert (in_tmp / "outputs" / "sweep_fake" / f"{local_study_id(path)}_summary.json").is_file()


def test_a_sweep_whose_every_trial_fails_stops_naming_a_log(in_tmp) -> None:
    # Two failures stay under max_consecutive_failures=3: before the fix the sweep ended quietly with `runs: 0`.
    path = write_sweep(in_tmp, {"data.source_prefix": {"value": "crash"}, "learning_rate": {"values": [0.1, 0.2]}})
    with pytest.raises(SweepStopped) as stopped:
        run_local(path)

    trials = sorted(load_study(in_tmp, path).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    last_log = trials[1].user_attrs["log_file"]
    assert str(stopped.value.code) == f"dsum: sweep fake stopped: all 2 trials failed; last trial's log: {last_log}"
    assert "simulated crash" in Path(last_log).read_text()
    summary = json.loads((in_tmp / "outputs" / "sweep_fake" / f"{local_study_id(path)}_summary.json").read_text())
    assert summary["runs"] == 0 and summary["stop_reason"].startswith("all 2 trials failed")
    # One success among failures is not a failed sweep.
    (in_tmp / "mixed").mkdir()
    mixed = write_sweep(in_tmp / "mixed", {"data.source_prefix": {"values": ["crash", "ok"]},
                                           "learning_rate": {"value": 0.1}}, name="mixed")
    assert run_local(mixed)["states"] == {"completed": 1}


def test_local_cli_exits_non_zero_when_every_trial_fails(in_tmp) -> None:
    """As a user runs it, with the real main.py: a value every trial shares fails when main.py parses its config
    (as a bad ``lora.r`` does), so no model is built. Before the fix: exit 0, ``runs: 0``."""
    sweep = load_sweep(REPO / "sweeps" / "quick.yaml")
    sweep["program"] = str(REPO / sweep["program"])
    sweep["command"][sweep["command"].index("configs/quickstart.yaml")] = str(REPO / "configs" / "quickstart.yaml")
    sweep["parameters"] = {"learning_rate": {"value": 1e-3}, "trainer.precision": {"value": "no-such-precision"}}
    path = in_tmp / "quick.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "dsum.sweep", "local", str(path), "--count", "1"], cwd=in_tmp,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode != 0, done.stdout + done.stderr
    [log] = (in_tmp / "outputs" / "sweep_quick" / "logs").glob("*.log")
    assert "no-such-precision" in log.read_text()
    assert done.stderr.strip().splitlines() == [
        f"dsum: sweep quick stopped: all 1 trial failed; last trial's log: {log}"]


# ------------------------------------------------------------------------------------------- pruning
def test_wandb_hyperband_rule() -> None:
    assert hyperband_bands({"type": "hyperband", "min_iter": 3})[:3] == [3, 9, 27]
    assert hyperband_bands({"type": "hyperband", "max_iter": 20, "s": 2, "eta": 3}) == [2, 6]
    # W&B's own example (sweeps.hyperband_stopping docstring): loss, minimized; runs b, c, d are running.
    pruner = WandbHyperbandPruner({"type": "hyperband", "max_iter": 5, "eta": 2, "s": 2})
    histories = {"a": [10, 9], "b": [10, 10], "c": [10, 8, 8], "d": [10, 7, 7], "e": [10, 6, 6]}
    stopped = [n for n in "bcd" if pruner.should_stop(histories[n], list(histories.values()))]
    assert stopped == ["b"]
    # At band 2 the threshold is 6: a run that was once at 4 survives with `strict: false`; W&B's default
    # (`strict: true`) judges its band value.
    others = [[5, 5], [6, 6], [4, 9, 9]]
    assert pruner.should_stop([4, 9, 9], others)
    assert not WandbHyperbandPruner({"type": "hyperband", "max_iter": 5, "eta": 2, "s": 2, "strict": False}
                                    ).should_stop([4, 9, 9], others)


def test_a_clearly_worse_trial_is_pruned(in_tmp) -> None:
    path = write_sweep(in_tmp, {"learning_rate": {"values": [0.95, 0.1]}}, program=LIGHTNING_PROGRAM,
                       early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    # Two earlier trials scored 90 and 80 at every validation.
    url = storage_url(None, (in_tmp / "outputs" / "sweep_fake").resolve())
    study = optuna.create_study(study_name=local_study_id(path), storage=pruning.open_storage(url),
                                direction="maximize")
    for score in (90.0, 80.0):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=score, intermediate_values={1: score, 2: score, 3: score, 4: score}))

    summary = run_local(path, workers=2)

    good, bad = sorted(records(in_tmp), key=lambda r: -r["sweep_params"]["learning_rate"])
    assert good["status"] == "completed" and len(good["metrics_history"]) == 4
    assert bad["status"] == "pruned"
    assert len(bad["metrics_history"]) == 1  # stopped after its first validation, of 4 epochs
    trials = {t.user_attrs.get(RUN_ID_ATTR): t for t in load_study(in_tmp, path).get_trials()}
    assert trials[good["run_id"]].state == TrialState.COMPLETE and trials[good["run_id"]].value == pytest.approx(95)
    trial = trials[bad["run_id"]]
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {1: pytest.approx(10.0)}
    assert trial.user_attrs[STATE_ATTR] == "pruned" and math.isclose(trial.user_attrs["metric"], 10.0)
    assert summary["states"] == {"completed": 1, "pruned": 1} and summary["best_run_id"] == good["run_id"]


# ------------------------------------------------------------------------------------------- killed sweeps
# Records `running`, works for `DSUM_TEST_TRIAL_SECONDS`, then records `completed` (metric = lr x 100);
# on SIGTERM records `interrupted` and exits 143, as main.py does.
SLOW_PROGRAM = '''
import json, os, signal, sys, time
from pathlib import Path
import yaml

entries = yaml.safe_load(open(os.environ["WANDB_SWEEP_PARAM_PATH"], encoding="utf-8"))
entries.pop("wandb_version", None)
params = {name: entry["value"] for name, entry in entries.items()}
run_dir = Path(os.environ["DSUM_SWEEP_DIR"]) / "runs" / os.environ["WANDB_RUN_ID"]
run_dir.mkdir(parents=True, exist_ok=True)


def write(status, **extra):
    record = {"run_id": os.environ["WANDB_RUN_ID"], "status": status, "monitor": "val/rouge_mean",
              "sweep_params": params, "wandb": {"sweep_id": os.environ["WANDB_SWEEP_ID"]}, "pid": os.getpid(),
              "history": [{"stage": "fit", "status": status, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}],
              **extra}
    (run_dir / "run.json").write_text(json.dumps(record))


def on_sigterm(signum, frame):
    write("interrupted")
    sys.exit(143)


signal.signal(signal.SIGTERM, on_sigterm)
write("running")
time.sleep(float(os.environ.get("DSUM_TEST_TRIAL_SECONDS", "1")))
write("completed", best_metric=params["learning_rate"] * 100)
'''
GRID4 = {"learning_rate": {"values": [0.1, 0.2]}, "num_beams": {"values": [1, 2]}}


def start_sweep(path: Path, **env: str) -> subprocess.Popen:
    """`python -m dsum.sweep local` in its own process group (as a terminal or a scheduler starts it)."""
    return subprocess.Popen([sys.executable, "-m", "dsum.sweep", "local", str(path)], cwd=path.parent,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_trials(tmp_path: Path, status: str, timeout: float = 120) -> list[dict]:
    """The trials whose record says ``status``, once there is one (records being written may not parse yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = [r for r in records(tmp_path) if r["status"] == status]
        except (FileNotFoundError, ValueError):
            found = []
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {status} trial within {timeout}s")


@pytest.mark.slow
def test_kill_9_of_the_sweep_process_group_loses_no_grid_combination(in_tmp) -> None:
    path = write_sweep(in_tmp, GRID4, program=SLOW_PROGRAM)
    sweep = start_sweep(path, DSUM_TEST_TRIAL_SECONDS="1")
    # Trial 0 completes; kill everything (driver and trial) while trial 1 runs.
    wait_for_trials(in_tmp, "completed")
    killed = wait_for_trials(in_tmp, "running")[0]
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()

    summary = run_local(path)

    found = records(in_tmp)
    by_id = {r["run_id"]: r for r in found}
    assert by_id[killed["run_id"]]["status"] == "failed"  # not `running` forever
    assert "died" in by_id[killed["run_id"]]["history"][-1]["error"]
    completed = sorted((r["sweep_params"]["learning_rate"], r["sweep_params"]["num_beams"])
                       for r in found if r["status"] == "completed")
    assert completed == [(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2)]
    assert summary["states"] == {"completed": 4, "failed": 1}
    assert [r["run_id"] for r in summary["retries"]] == [killed["run_id"]]
    assert summary["retries"][0]["retried_as"]["state"] == "completed"
    csv_rows = (in_tmp / "outputs" / "sweep_fake" / f"{local_study_id(path)}_runs.csv").read_text()
    assert ",running," not in csv_rows


@pytest.mark.slow
def test_a_killed_driver_takes_its_trial_down_and_the_worker_limit_holds(in_tmp) -> None:
    path = write_sweep(in_tmp, GRID4, program=SLOW_PROGRAM)
    sweep = start_sweep(path, DSUM_TEST_TRIAL_SECONDS="60")
    trial = wait_for_trials(in_tmp, "running")[0]
    os.kill(sweep.pid, signal.SIGKILL)  # the driver alone
    sweep.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{trial['pid']}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{trial['pid']}").exists(), "the trial outlived its driver"
    assert json.loads((in_tmp / "outputs" / "sweep_fake" / "runs" / trial["run_id"] / "run.json").read_text()
                      )["status"] == "interrupted"

    os.environ["DSUM_TEST_TRIAL_SECONDS"] = "0"
    try:
        summary = run_local(path, workers=1)
    finally:
        del os.environ["DSUM_TEST_TRIAL_SECONDS"]
    assert summary["states"] == {"completed": 4, "interrupted": 1}
    assert summary["retries"][0]["run_id"] == trial["run_id"]
