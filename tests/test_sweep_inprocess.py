"""In-process decoding trials (``dsum.sweep.inprocess``): one worker process runs validate trials one after
another, keeping the model and reusing generations, with the scores and records a process per trial gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from dsum.sweep.inprocess import IN_PROCESS_ENV, InProcessPool, decoding_argv, in_process_enabled
from dsum.sweep.local import run_local
from dsum.sweep.summary import trial_record
from tests.conftest import REPO, SAMPLE
from tests.test_sweep_local import quick_sweep_on_the_sample

MAIN = str(REPO / "main.py")
# Sampling with its own seed, a prompt and post-processing: everything a trial could leak into the next.
SAMPLED = ["--model.generation.do_sample=true", "--model.generation.temperature=1.3", "--model.generation.top_p=0.9",
           "--seed_everything=7"]
BEAMS = ["--model.generation.num_beams=3", "--model.generation.no_repeat_ngram_size=2",
         "--model.generation.length_penalty=0.6", "--model.postprocess.cut_unfinished=true",
         "--model.postprocess.collapse_repeats=true", "--data.source_prefix=요약: ", "--seed_everything=1"]


def decoding_args(model: Path, cache: Path) -> list[str]:
    """validate on 8 dev dialogues, 8 new tokens: the tiny model's decoding in a second or two."""
    return ["--config", str(REPO / "configs" / "quickstart.yaml"), f"--model.pretrained={model}",
            f"--data.train_file={SAMPLE / 'train.csv'}", f"--data.val_file={SAMPLE / 'dev.csv'}",
            f"--data.test_file={SAMPLE / 'dev.csv'}", f"--data.predict_file={SAMPLE / 'test.csv'}",
            f"--data.cache_dir={cache}", "--data.val_subset=8", "--model.generation.max_new_tokens=8",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def command(model: Path, tmp: Path, run: str, *extra: str) -> list[str]:
    return [sys.executable, MAIN, "validate", *decoding_args(model, tmp / "cache"),
            f"--trainer.default_root_dir={tmp / run}", *extra]


def metrics(run_dir: Path) -> dict[str, float]:
    record = json.loads((run_dir / "validate.json").read_text())
    assert record["status"] == "completed", record
    return record["final_metrics"]


def run_in_pool(pool: InProcessPool, cmd: list[str], log: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_RUN_ID", None)
    return pool.run(0, cmd, env, log, lambda process: None, lambda: None, 30.0)


# ------------------------------------------------------------------------------------------- which trials
def test_only_validate_and_test_of_this_main_py_run_in_process(tmp_path) -> None:
    assert decoding_argv(["/usr/bin/env", sys.executable, MAIN, "validate", "--x=1"]) == [MAIN, "validate", "--x=1"]
    assert decoding_argv([sys.executable, MAIN, "test"]) == [MAIN, "test"]
    assert decoding_argv(["/usr/bin/env", sys.executable, MAIN, "fit", "--x=1"]) is None
    other = tmp_path / "main.py"
    other.write_text("")
    assert decoding_argv(["/usr/bin/env", sys.executable, str(other), "validate"]) is None
    assert decoding_argv(["/usr/bin/env", "/other/python", MAIN, "validate"]) is None


def test_in_process_is_on_unless_opted_out() -> None:
    assert in_process_enabled(None, {}) is True
    assert in_process_enabled(None, {IN_PROCESS_ENV: "0"}) is False
    assert in_process_enabled(False, {IN_PROCESS_ENV: "1"}) is False
    with pytest.raises(ValueError, match=f"{IN_PROCESS_ENV}='maybe'"):
        in_process_enabled(None, {IN_PROCESS_ENV: "maybe"})


# ------------------------------------------------------------------------------------------- one worker
def test_trials_in_one_process_are_isolated_and_score_as_a_process_each(tiny_models, tmp_path) -> None:
    model = tiny_models["bart"]
    alone = command(model, tmp_path, "alone", *SAMPLED)
    subprocess.run(alone, check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "offline"})
    beams_alone = command(model, tmp_path, "beams_alone", *BEAMS)
    subprocess.run(beams_alone, check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "offline"})
    pool = InProcessPool(tmp_path / "workers")
    try:
        reports = [run_in_pool(pool, command(model, tmp_path, run, *extra), tmp_path / f"{run}.log")
                   for run, extra in (("a1", SAMPLED), ("b", BEAMS), ("a2", SAMPLED))]
    finally:
        pool.close()
    assert [r["code"] for r in reports] == [0, 0, 0], [(tmp_path / f"{r}.log").read_text()[-2000:]
                                                         for r in ("a1", "b", "a2")]
    # One load; the second A's sampled texts come from the cache, with the RNG left as sampling leaves it.
    assert [r["model"] for r in reports] == ["loaded", "reused", "reused"]
    assert [r["generation_cache"] for r in reports] == ["miss", "miss", "hit"]
    assert metrics(tmp_path / "a1") == metrics(tmp_path / "a2") == metrics(tmp_path / "alone")
    assert metrics(tmp_path / "b") == metrics(tmp_path / "beams_alone")
    assert metrics(tmp_path / "a1") != metrics(tmp_path / "b")
    # Each trial's own log and record, as its own process would write them.
    record = json.loads((tmp_path / "b" / "validate.json").read_text())
    assert record["command"][1:3] == [MAIN, "validate"] and "--data.source_prefix=요약: " in record["command"]
    assert "val/rouge_mean" in (tmp_path / "b.log").read_text()


def test_memory_does_not_grow_over_20_trials(tiny_models, tmp_path) -> None:
    model = tiny_models["bart"]
    settings = [SAMPLED, BEAMS, ["--model.generation.num_beams=2"], ["--model.postprocess.cut_unfinished=true"]]
    pool = InProcessPool(tmp_path / "workers")
    rss = []
    try:
        for i in range(20):
            report = run_in_pool(pool, command(model, tmp_path, f"r{i}", *settings[i % len(settings)]),
                                 tmp_path / f"r{i}.log")
            assert report["code"] == 0, (tmp_path / f"r{i}.log").read_text()[-2000:]
            rss.append(psutil.Process(pool.workers[0].pid).memory_info().rss)
    finally:
        pool.close()
    # After the first few trials (imports, W&B and metric set-up done once), flat within a small tolerance.
    warm = max(rss[2:5])
    assert rss[-1] - warm < max(40 * 2**20, 0.08 * warm), [round(r / 2**20) for r in rss]


# ------------------------------------------------------------------------------------------- the local engine
def decoding_sweep(tmp: Path, model: Path, parameters: dict, *extra: str) -> Path:
    """A validate sweep YAML over the tiny model (as sweeps/generation_params.yaml, on the sample)."""
    sweep = {
        "name": "decode", "program": MAIN, "method": "grid",
        "metric": {"name": "val/rouge_mean", "goal": "maximize"},
        "command": ["${env}", "${interpreter}", "${program}", "validate", *decoding_args(model, tmp / "cache"),
                    *extra, "${args}"],
        "parameters": parameters,
    }
    path = tmp / "decode.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False, allow_unicode=True))
    return path


def records(tmp: Path) -> dict[str, dict]:
    runs = sorted((tmp / "outputs" / "sweep_decode" / "runs").iterdir())
    return {r["run_id"]: r for r in (trial_record(d) for d in runs) if r is not None}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSUM_SWEEP_DIR", raising=False)
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    return tmp_path


def test_a_decoding_sweep_reuses_generations_and_says_which_trials_hit(tiny_models, in_tmp) -> None:
    # do_sample is false: temperature changes nothing generated; cut_unfinished changes only the scoring.
    path = decoding_sweep(in_tmp, tiny_models["bart"], {"temperature": {"values": [0.7, 1.3]},
                                                        "model.postprocess.cut_unfinished": {"values": [False, True]}},
                          "--model.generation.num_beams=2")
    summary = run_local(path, workers=1)

    trials = records(in_tmp)
    assert summary["states"] == {"completed": 4} and len(trials) == 4
    rows = summary["in_process"]
    assert set(rows) == set(trials)
    assert sorted(r["generation_cache"] for r in rows.values()) == ["hit", "hit", "hit", "miss"]
    assert sorted(r["model"] for r in rows.values()) == ["loaded", "reused", "reused", "reused"]
    written = json.loads((in_tmp / "outputs" / "sweep_decode" / f"{summary['sweep_id']}_summary.json").read_text())
    assert written["in_process"] == rows
    by_cut = {}
    for record in trials.values():
        by_cut.setdefault(record["sweep_params"]["model.postprocess.cut_unfinished"], set()).add(
            json.dumps(record["final_metrics"], sort_keys=True))
    assert len(by_cut[False]) == len(by_cut[True]) == 1  # temperature is ignored without sampling
    # The same trial in a process of its own (the opt-out): the same record fields and scores.
    other = in_tmp / "per_process"
    other.mkdir()
    os.chdir(other)
    single = decoding_sweep(other, tiny_models["bart"], {"temperature": {"value": 0.7},
                                                         "model.postprocess.cut_unfinished": {"value": True}},
                            "--model.generation.num_beams=2")
    os.environ[IN_PROCESS_ENV] = "0"
    try:
        alone = run_local(single, workers=1)
    finally:
        del os.environ[IN_PROCESS_ENV]
    assert "in_process" not in alone
    [record] = records(other).values()
    [twin] = [r for r in trials.values() if r["sweep_params"] == record["sweep_params"]]
    assert record["final_metrics"] == twin["final_metrics"]
    assert set(record) == set(twin)


def test_a_failing_trial_is_recorded_failed_and_the_next_trial_runs(tiny_models, in_tmp) -> None:
    path = decoding_sweep(in_tmp, tiny_models["bart"], {"temperature": {"values": [-1.0, 1.0]}},
                          "--model.generation.do_sample=true")
    summary = run_local(path, workers=1)

    trials = sorted(records(in_tmp).values(), key=lambda r: r["sweep_params"]["temperature"])
    assert [r["status"] for r in trials] == ["failed", "completed"]
    assert summary["states"] == {"failed": 1, "completed": 1}
    assert [summary["in_process"][r["run_id"]]["model"] for r in trials] == ["loaded", "reused"]
    log = (in_tmp / "outputs" / "sweep_decode" / "logs" / f"{trials[0]['run_id']}.log").read_text()
    assert "temperature" in log


def test_llm_trials_with_another_prompt_reuse_the_lora_model_and_stay_isolated(tiny_llm_random, tmp_path) -> None:
    def llm_command(run: str, *extra: str) -> list[str]:
        args = decoding_args(tiny_llm_random, tmp_path / "cache")
        args[1] = str(REPO / "configs" / "quickstart-llm.yaml")
        return [sys.executable, MAIN, "validate", *args, f"--trainer.default_root_dir={tmp_path / run}", *extra]

    chat = ["--data.prompt_template=chat", "--model.generation.num_beams=2"]
    plain = ["--data.prompt_template=plain_ko", *SAMPLED[:-1]]  # sampling, under the config's seed
    subprocess.run(llm_command("alone", *chat), check=True, capture_output=True,
                   env={**os.environ, "WANDB_MODE": "offline"})
    subprocess.run(llm_command("plain_alone", *plain), check=True, capture_output=True,
                   env={**os.environ, "WANDB_MODE": "offline"})
    seeded = [*chat, "--seed_everything=7"]
    subprocess.run(llm_command("seeded_alone", *seeded), check=True, capture_output=True,
                   env={**os.environ, "WANDB_MODE": "offline"})
    pool = InProcessPool(tmp_path / "workers")
    try:
        reports = [run_in_pool(pool, llm_command(run, *extra), tmp_path / f"{run}.log")
                   for run, extra in (("a1", chat), ("b", plain), ("a2", chat), ("c", seeded))]
    finally:
        pool.close()
    assert [r["code"] for r in reports] == [0, 0, 0, 0], (tmp_path / "b.log").read_text()[-3000:]
    # The prompt is the data's: the model (LoRA-wrapped once, not twice) is reused. New mask rows and a new LoRA
    # adapter draw from the seed, so another seed loads again.
    assert [r["model"] for r in reports] == ["loaded", "reused", "reused", "loaded"]
    # Other weights: A's generations (same settings, same prompts) are not C's.
    assert [r["generation_cache"] for r in reports] == ["miss", "miss", "hit", "miss"]
    assert metrics(tmp_path / "c") == metrics(tmp_path / "seeded_alone")
    assert metrics(tmp_path / "a1") == metrics(tmp_path / "a2") == metrics(tmp_path / "alone")
    assert metrics(tmp_path / "b") == metrics(tmp_path / "plain_alone")


def test_each_in_process_trial_keeps_its_own_wandb_run(tiny_models, tmp_path) -> None:
    pool = InProcessPool(tmp_path / "workers")
    try:
        reports = []
        for run, run_id in (("w1", "run00001"), ("w2", "run00002")):
            cmd = [c for c in command(tiny_models["bart"], tmp_path, run) if c != "--trainer.logger=false"]
            env = {**os.environ, "WANDB_MODE": "offline", "WANDB_RUN_ID": run_id}
            reports.append(pool.run(0, cmd, env, tmp_path / f"{run}.log", lambda p: None, lambda: None, 30.0))
    finally:
        pool.close()
    assert [r["code"] for r in reports] == [0, 0], (tmp_path / "w2.log").read_text()[-3000:]
    for run, run_id in (("w1", "run00001"), ("w2", "run00002")):
        record = json.loads((tmp_path / run / "validate.json").read_text())
        assert record["run_id"] == record["wandb"]["run_id"] == run_id
        [offline] = (tmp_path / run / "wandb").glob(f"offline-run-*-{run_id}")
        assert any(offline.rglob("*.wandb"))


# ------------------------------------------------------------------------------------------- training trials
def quick_fit_sweep(tmp: Path, model: Path) -> Path:
    """sweeps/quick.yaml (fit, tiny BART) on the sample, 2 trials of 2 train batches."""
    path = quick_sweep_on_the_sample(model, tmp, "--trainer.enable_progress_bar=false")
    sweep = yaml.safe_load(path.read_text())
    sweep["parameters"]["learning_rate"] = {"value": 1.0e-3}
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_training_trials_fork_from_a_preloaded_server_with_the_same_results(tiny_models, in_tmp) -> None:
    forked_dir, own_dir = in_tmp / "forked", in_tmp / "own"
    results = {}
    for directory, flag in ((forked_dir, "1"), (own_dir, "0")):
        directory.mkdir()
        os.chdir(directory)
        os.environ[IN_PROCESS_ENV] = flag
        try:
            summary = run_local(quick_fit_sweep(directory, tiny_models["bart"]), workers=1)
        finally:
            del os.environ[IN_PROCESS_ENV]
        assert summary["states"] == {"completed": 2}
        runs = [trial_record(d) for d in sorted((directory / "outputs" / "sweep_quick" / "runs").iterdir())]
        results[flag] = {r["sweep_params"]["num_beams"]: r for r in runs}
    assert (forked_dir / "outputs" / "sweep_quick" / "logs" / "in_process" / "fork_server0.log").is_file()
    assert not (own_dir / "outputs" / "sweep_quick" / "logs" / "in_process").exists()
    for beams, forked in results["1"].items():
        own = results["0"][beams]
        assert forked["metrics_history"] == own["metrics_history"]
        assert forked["status"] == own["status"] == "completed" and set(forked) == set(own)
        assert Path(forked["best_model"], "model.safetensors").is_file()
        print(f"num_beams={beams}: start-up to first step {forked['history'][-1].get('startup_seconds'):.2f} s "
              f"forked, {own['history'][-1].get('startup_seconds'):.2f} s in a process of its own")


def test_sigterm_of_the_sweep_interrupts_a_forked_training_trial(tiny_models, in_tmp) -> None:
    import signal
    import time

    path = quick_fit_sweep(in_tmp, tiny_models["bart"])
    sweep = yaml.safe_load(path.read_text())
    sweep["parameters"]["num_train_epochs"] = {"value": 500}
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    driver = subprocess.Popen([sys.executable, "-m", "dsum.sweep", "local", str(path), "--count", "1"], cwd=in_tmp,
                              env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = in_tmp / "outputs" / "sweep_quick" / "runs"
    deadline = time.monotonic() + 240
    record = None
    while time.monotonic() < deadline and driver.poll() is None:
        record = next((trial_record(d) for d in runs.glob("*")), None) if runs.is_dir() else None
        if record and record.get("metrics_history"):  # training is under way (one validation done)
            break
        time.sleep(0.5)
    assert record and record.get("metrics_history"), driver.communicate(timeout=30)[0][-3000:]
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=120)[0]
    assert driver.returncode != 0, output[-2000:]
    [record] = [trial_record(d) for d in runs.glob("*")]
    assert record["status"] == "interrupted", output[-2000:]
    assert (in_tmp / "outputs" / "sweep_quick" / "logs" / "in_process" / "fork_server0.log").is_file()
    # Neither the fork server nor its trial outlives the sweep.
    assert not left_in(in_tmp, "dsum.sweep.inprocess")


def left_in(directory: Path, name: str, wait: float = 10.0) -> list[int]:
    """Pids of processes still running ``name`` from ``directory`` after up to ``wait`` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        pids = []
        for process in psutil.process_iter(["cmdline", "cwd"]):
            if name in " ".join(process.info["cmdline"] or []) and process.info["cwd"] == str(directory):
                pids.append(process.pid)
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def fake_wandb_agent(trials: list[dict], sweep_dir: Path):
    """``wandb.agent(sweep, function=...)`` as W&B's Python agent runs it (wandb/agents/pyagent.py, `_run_job`):
    per trial it sets WANDB_RUN_ID and WANDB_SWEEP_ID, writes the parameters to WANDB_SWEEP_PARAM_PATH, and calls
    the function in this process; an exception fails that trial and the agent goes on."""
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    def agent(sweep_id, function, count=None, project=None, entity=None):
        for i, params in enumerate(trials[:count]):
            run_id = f"wb{i:04d}"
            param_path = sweep_dir / "wandb" / f"config-{run_id}.yaml"
            param_path.parent.mkdir(parents=True, exist_ok=True)
            save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in params.items()})
            os.environ.update(WANDB_RUN_ID=run_id, WANDB_SWEEP_ID=sweep_id.rsplit("/", 1)[-1],
                              WANDB_SWEEP_PARAM_PATH=str(param_path))
            try:
                function()
            except RuntimeError:
                pass
            finally:
                for name in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH"):
                    os.environ.pop(name, None)

    return agent


def test_a_wandb_agent_runs_decoding_trials_in_one_worker(tiny_models, in_tmp, monkeypatch) -> None:
    """`dsum.sweep agent` on a decoding sweep: W&B's Python agent calls one function per trial, which hands the
    trial to the in-process worker; each trial writes its own record and W&B run, a failing one is counted."""
    from dsum.sweep import inprocess

    path = decoding_sweep(in_tmp, tiny_models["bart"], {"num_beams": {"values": [1, 2]}})
    config = yaml.safe_load(path.read_text())
    answers = []
    original = inprocess.InProcessPool.run

    def spy(self, *args, **kwargs):
        answers.append(original(self, *args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(inprocess.InProcessPool, "run", spy)
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep_dir = in_tmp / "outputs" / "sweep_decode"
    trials = [{"num_beams": 1}, {"num_beams": 2}, {"num_beams": 1, "temperature": -1.0, "do_sample": True}]
    failed = inprocess.run_wandb_agent("sweep123", "decode", config, count=3,
                                       agent=fake_wandb_agent(trials, sweep_dir))

    assert failed == 1
    found = records(in_tmp)
    assert sorted(found) == ["wb0000", "wb0001", "wb0002"]
    assert [found[r]["status"] for r in sorted(found)] == ["completed", "completed", "failed"]
    assert found["wb0001"]["sweep_params"] == {"num_beams": 2}
    assert [a.get("model") for a in answers[:2]] == ["loaded", "reused"]  # one worker kept the model
    assert len({a.get("pid") for a in answers if a.get("pid")}) <= 1
    assert {found[r]["wandb"]["sweep_id"] for r in found} == {"sweep123"}  # the agent's run id and sweep reached it


@pytest.mark.parametrize("subcommand, opt_out, expected", [
    ("validate", None, "in-process"), ("test", None, "in-process"), ("fit", None, "wandb agent"),
    ("validate", False, "wandb agent"),
])
def test_the_agent_command_runs_decoding_sweeps_in_process(monkeypatch, subcommand, opt_out, expected) -> None:
    import dsum.sweep.__main__ as cli
    from dsum.sweep import inprocess

    config = {"command": ["${env}", "${interpreter}", "${program}", subcommand, "${args}"]}
    ran = []
    monkeypatch.setattr(cli, "require_server", lambda: None)
    monkeypatch.setattr(cli, "_resolve", lambda sweep, project, entity: ("ent/proj/abc", "decode", config))
    monkeypatch.setattr(cli, "summarize", lambda *args, **kwargs: None)
    monkeypatch.setattr(cli, "run_agent", lambda *args: ran.append("wandb agent") or 0)
    monkeypatch.setattr(inprocess, "run_wandb_agent", lambda *args: ran.append("in-process") or 0)
    assert cli.agent("sweeps/x.yaml", count=2, in_process=opt_out) == 0
    assert ran == [expected]
