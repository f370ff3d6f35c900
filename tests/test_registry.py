"""The model registry: versions per evaluation key, the ``best`` alias, refusals, sandbox routing, W&B artifacts."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from dsum import registry as reg
from dsum.infra.files import atomic_write_dir
from dsum.sweep.__main__ import registry_list, registry_rollback, registry_show
from dsum.registry import (
    EvaluationKey, RegistryError, alias_version, current_best, move_alias, promote_if_better, resolve, run_facts,
    versions,
)
from dsum.sweep.summary import summarize
from tests.conftest import REPO, SAMPLE

KEY = EvaluationKey("val/rouge_mean", "maximize", {"name": "rouge", "tokenizer": "whitespace"}, "a" * 64, None, "dev.csv")


def export(path: Path, fill: float = 1.0) -> Path:
    """A complete exported model: one safetensors file whose weights are ``fill``."""
    return atomic_write_dir(path, lambda d: save_file({"w": torch.full((4,), fill)}, str(d / "model.safetensors")))


def test_versions_are_immutable_and_best_moves_only_to_a_winner(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    first = promote_if_better(export(tmp_path / "a", 1.0), 30.0, KEY, root, {"run_id": "a"})
    worse = promote_if_better(export(tmp_path / "b", 2.0), 29.0, KEY, root, {"run_id": "b"})
    second = promote_if_better(export(tmp_path / "c", 3.0), 31.5, KEY, root, {"run_id": "c"})
    key_dir = root / KEY.slug()
    assert (first.promoted, first.version, worse.promoted, second.promoted, second.version) == (True, 1, False, True, 2)
    assert worse.incumbent["run_id"] == "a" and second.incumbent["version"] == 1
    assert versions(key_dir) == [1, 2] and alias_version(key_dir) == 2
    assert (key_dir / "best").resolve() == (key_dir / "v2").resolve()
    # v1 is untouched by the later promotion; each version carries its own facts.
    assert json.loads((key_dir / "v1" / "meta.json").read_text())["run_id"] == "a"
    meta = current_best(key_dir)
    assert meta["metric"] == {"name": "val/rouge_mean", "value": 31.5, "goal": "maximize", "settings": KEY.settings}
    assert meta["validation"] == {"sha256": "a" * 64, "val_subset": None, "file": "dev.csv"} and meta["replaced"] == 1
    assert json.loads((key_dir / "key.json").read_text())["digest"] == KEY.digest()
    events = [json.loads(line) for line in (key_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["version"]) for e in events] == [("promoted", 1), ("promoted", 2)]


def test_scores_are_compared_only_within_their_key(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    promote_if_better(export(tmp_path / "a"), 40.0, KEY, root)
    subset = EvaluationKey(**{**KEY.__dict__, "val_subset": 50})
    tokenizer = EvaluationKey(**{**KEY.__dict__, "settings": {"name": "rouge", "tokenizer": "morpheme"}})
    other_data = EvaluationKey(**{**KEY.__dict__, "val_sha256": "b" * 64})
    renamed = EvaluationKey(**{**KEY.__dict__, "val_name": "copy_of_dev.csv"})  # same bytes: same key
    assert len({KEY.slug(), subset.slug(), tokenizer.slug(), other_data.slug()}) == 4
    assert len({KEY.digest(), subset.digest(), tokenizer.digest(), other_data.digest()}) == 4
    for key in (subset, tokenizer, other_data):  # a lower score on another key is that key's best, not a loss
        assert promote_if_better(export(tmp_path / key.digest()[:6]), 10.0, key, root).version == 1
    assert renamed.digest() == KEY.digest()
    assert promote_if_better(export(tmp_path / "r"), 39.0, renamed, root).promoted is False
    assert current_best(root / KEY.slug())["metric"]["value"] == 40.0


def test_minimize_goal(tmp_path: Path) -> None:
    key = EvaluationKey("val/loss", "minimize", {"name": "val/loss"}, "c" * 64)
    root = tmp_path / "registry"
    assert promote_if_better(export(tmp_path / "a"), 2.0, key, root).promoted
    assert not promote_if_better(export(tmp_path / "b"), 2.5, key, root).promoted
    assert promote_if_better(export(tmp_path / "c"), 1.5, key, root).version == 2


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "abc"])
def test_non_finite_values_are_refused(tmp_path: Path, value) -> None:
    with pytest.raises(RegistryError, match=r"val/rouge_mean=.* (is not finite|is not a number); not promoted"):
        promote_if_better(export(tmp_path / "a"), value, KEY, tmp_path / "registry")
    assert not (tmp_path / "registry").exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_are_refused(tmp_path: Path, bad: float) -> None:
    root = tmp_path / "registry"
    promote_if_better(export(tmp_path / "good"), 20.0, KEY, root)
    diverged = export(tmp_path / "diverged", bad)
    with pytest.raises(RegistryError, match=r"model\.safetensors: tensor 'w' holds NaN or infinite values"):
        promote_if_better(diverged, 99.0, KEY, root)
    assert versions(root / KEY.slug()) == [1]


def test_incomplete_candidate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "half" / "model.safetensors"))
    with pytest.raises(RegistryError, match=r"half: not a complete exported model"):
        promote_if_better(tmp_path / "half", 1.0, KEY, tmp_path / "registry")


def test_rollback_moves_best_back_and_later_promotions_must_beat_it(tmp_path: Path, capsys) -> None:
    root = tmp_path / "registry"
    for i, value in enumerate([30.0, 35.0]):
        promote_if_better(export(tmp_path / f"m{i}", float(i)), value, KEY, root, {"run_id": f"m{i}"})
    meta = registry_rollback(KEY.slug(), "v1", registry=str(root))
    key_dir = root / KEY.slug()
    assert meta["run_id"] == "m0" and alias_version(key_dir) == 1 and versions(key_dir) == [1, 2]
    assert resolve(key_dir / "best")["version"] == 1
    # The rolled-back model is the one to beat now.
    assert promote_if_better(export(tmp_path / "m2", 2.0), 32.0, KEY, root).version == 3
    with pytest.raises(RegistryError, match=r"no version v9 \(versions: \[1, 2, 3\]\)"):
        move_alias(key_dir, 9)
    capsys.readouterr()
    rows = registry_list(str(root))
    listing = capsys.readouterr().out
    assert [m["version"] for m in rows[0]["versions"]] == [1, 2, 3] and rows[0]["best"] == 3
    assert "best -> v3  32.0000" in listing and "        v1  30.0000  run m0" in listing
    assert registry_show(KEY.slug(), "best", registry=str(root))["version"] == 3
    assert registry_show(KEY.slug(), "2", registry=str(root))["run_id"] == "m1"


def test_registry_cli(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    for i, value in enumerate([30.0, 35.0]):
        promote_if_better(export(tmp_path / f"m{i}", float(i)), value, KEY, root, {"run_id": f"m{i}"})
    cli = [sys.executable, "-m", "dsum.sweep", "registry"]
    done = subprocess.run([*cli, "rollback", KEY.slug(), "v1", "--registry", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{root / KEY.slug() / 'best'} -> v1 (30.0)" in done.stdout
    done = subprocess.run([*cli, "show", KEY.slug(), "v7", "--registry", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no such version (versions: [1, 2])" in done.stderr


def test_wandb_artifact_is_logged_online_only(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []

    class Artifact:
        def __init__(self, name: str, type: str, metadata: dict) -> None:
            calls.append(("artifact", name, type, metadata["version"]))

        def add_dir(self, path: str) -> None:
            calls.append(("add_dir", Path(path).name, sorted(p.name for p in Path(path).iterdir())))

    class Run:
        def log_artifact(self, artifact: Artifact, aliases: list[str]) -> None:
            calls.append(("log_artifact", aliases))

        def finish(self) -> None:
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs["id"], kwargs["project"], kwargs["resume"]))
        return Run()

    fake = types.SimpleNamespace(init=init, Artifact=Artifact, Settings=lambda **kwargs: kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    root = tmp_path / "registry"
    monkeypatch.setenv("WANDB_MODE", "offline")
    promote_if_better(export(tmp_path / "a"), 1.0, KEY, root, wandb_run={"run_id": "r1", "project": "p"})
    assert calls == []  # offline: the local registry alone
    monkeypatch.setenv("WANDB_MODE", "online")
    promote_if_better(export(tmp_path / "b"), 2.0, KEY, root, wandb_run={"run_id": "r2", "project": "p"})
    assert calls == [
        ("init", "r2", "p", "allow"),
        ("artifact", f"dsum-{KEY.slug()}", "model", 2),
        ("add_dir", "v2", [".complete", "meta.json", "model.safetensors"]),
        ("log_artifact", ["best", "dsum-v2"]),  # W&B keeps v<N> for its own numbering
        ("finish",),
    ]
    # W&B failing does not undo the local promotion.
    def offline_server(**kwargs):
        raise ConnectionError("no route to api.wandb.ai")

    monkeypatch.setattr(fake, "init", offline_server)
    with pytest.warns(UserWarning, match=r"v3 promoted locally, but logging it to W&B failed: no route"):
        assert promote_if_better(export(tmp_path / "c"), 3.0, KEY, root, wandb_run={"run_id": "r3"}).version == 3
    assert alias_version(root / KEY.slug()) == 3


# --------------------------------------------------------------------------------------------- from sweeps
def fake_trial(sweep_dir: Path, run_id: str, value: float, val_file: Path, pretrained: str = "digit82/kobart",
               subset: int | None = None, export_model: bool = True) -> Path:
    """A finished trial as main.py leaves it: run.json, config.yaml and (optionally) best_model/."""
    run_dir = sweep_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    config = {"model": {"class_path": "dsum.models.Seq2SeqSummarizer", "init_args": {"pretrained": pretrained}},
              "data": {"val_file": str(val_file), "val_subset": subset}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    record = {"run_id": run_id, "run_dir": str(run_dir), "config": str(run_dir / "config.yaml"),
              "status": "completed", "monitor": "val/rouge_mean", "best_metric": value,
              "metric": {"name": "rouge", "tokenizer": "whitespace", "references": "mean", "scale": 100},
              "wandb": {"sweep_id": "s1", "mode": "offline"}, "sweep_params": {"learning_rate": value / 1000},
              "history": [{"started_at": f"2026-11-30T10:{value:02.0f}:00"}]}
    if export_model:
        record["best_model"] = str(export(run_dir / "best_model", value))
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def test_run_facts_key_the_validation_file_bytes_and_settings(tmp_path: Path) -> None:
    dev = tmp_path / "dev.csv"
    dev.write_bytes((SAMPLE / "dev.csv").read_bytes() + b"extra,row,x\n")
    run_dir = fake_trial(tmp_path / "sweep", "r1", 30.0, dev, subset=20)
    record = json.loads((run_dir / "run.json").read_text())
    facts = run_facts(record, "val/rouge_mean", "maximize")
    assert facts.key.val_sha256 == reg.file_sha256(dev) and facts.key.val_subset == 20
    assert facts.key.settings == record["metric"] and facts.sandbox is False
    assert facts.pretrained == "digit82/kobart" and facts.model_class == "dsum.models.Seq2SeqSummarizer"
    # No metric settings recorded: the metric name alone.
    assert run_facts({**record, "metric": None}, "val/rouge_mean", "maximize").key.settings == {"name": "val/rouge_mean"}
    # The hash the run recorded of what it read wins over the file as it is now.
    recorded = {**record, "val_data": {"sha256": "e" * 64}}
    assert run_facts(recorded, "val/rouge_mean", "maximize").key.val_sha256 == "e" * 64
    dev.unlink()
    assert run_facts(recorded, "val/rouge_mean", "maximize").key.val_sha256 == "e" * 64
    with pytest.raises(RegistryError, match=r"config\.yaml: data\.val_file=.*dev\.csv not found"):
        run_facts(record, "val/rouge_mean", "maximize")


def test_sample_and_tiny_runs_promote_into_the_sandbox(tmp_path: Path, tiny_models) -> None:
    real = tmp_path / "dev.csv"
    real.write_bytes((SAMPLE / "dev.csv").read_bytes() + b"extra,row,x\n")
    sample_copy = tmp_path / "copy_of_sample.csv"
    sample_copy.write_bytes((SAMPLE / "dev.csv").read_bytes())
    # tiny models carry the marker in config.json (dsum.tiny.build); a fine-tuned export keeps it.
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "config.json").write_text(json.dumps({**json.loads((tiny_models["bart"] / "config.json").read_text()),
                                                 reg.TINY_MARKER: True}))
    cases = {"sample": (SAMPLE / "dev.csv", "digit82/kobart"), "sample_copy": (sample_copy, "digit82/kobart"),
             "tiny": (real, str(tiny)), "real": (real, "digit82/kobart")}
    summaries = {}
    for name, (val_file, pretrained) in cases.items():
        sweep_dir = tmp_path / f"sweep_{name}"
        fake_trial(sweep_dir, f"{name}1", 30.0, val_file, pretrained)
        summaries[name] = summarize(sweep_dir, "s1", registry=tmp_path / "models" / "registry",
                                    sandbox_registry=tmp_path / "models" / "sandbox")
    assert {n: (s["promoted"], s["sandbox"], Path(s["registry"]).name) for n, s in summaries.items()} == {
        "sample": (True, True, "sandbox"), "sample_copy": (False, True, "sandbox"), "tiny": (True, True, "sandbox"),
        "real": (True, False, "registry"),
    }
    # A copy of the sample is the sample (same bytes, same key): its tie does not replace the first.
    assert summaries["sample_copy"]["registry_key"] == summaries["sample"]["registry_key"]
    assert [p.name for p in (tmp_path / "models" / "registry").iterdir()] == [summaries["real"]["registry_key"]]


def test_summary_promotes_and_records_the_version_a_generation_sweep_tunes(tmp_path: Path) -> None:
    dev = tmp_path / "dev.csv"
    dev.write_bytes((SAMPLE / "dev.csv").read_bytes() + b"extra,row,x\n")
    root = tmp_path / "models" / "registry"
    fit_dir = tmp_path / "sweep_hp"
    for run_id, value in [("a", 31.0), ("b", 36.0), ("c", 33.0)]:
        fake_trial(fit_dir, run_id, value, dev)
    summary = summarize(fit_dir, "s1", registry=root)
    assert (summary["best_run_id"], summary["promoted"], summary["registry_version"]) == ("b", True, 1)
    best = root / summary["registry_key"] / "best"
    meta = json.loads((best / "meta.json").read_text())
    assert meta["run_id"] == "b" and meta["sweep_id"] == "s1" and meta["params"] == {"learning_rate": 0.036}
    assert meta["model"]["pretrained"] == "digit82/kobart" and meta["metric"]["settings"]["tokenizer"] == "whitespace"
    saved = json.loads((fit_dir / "s1_summary.json").read_text())
    assert saved["registry_path"] == str(root / summary["registry_key"] / "v1")
    # Summarising again: nothing new to promote; the summary still names the version that holds the best.
    again = summarize(fit_dir, "s1", registry=root)
    assert (again["promoted"], again["registry_version"]) == (False, 1)

    # A generation sweep runs validate on models/registry/<key>/best: the summary names the version.
    gen_dir = tmp_path / "sweep_gen"
    for run_id, value in [("g1", 36.5), ("g2", 37.0)]:
        fake_trial(gen_dir, run_id, value, dev, pretrained=str(best), export_model=False)
    gen = summarize(gen_dir, "s1", registry=root)
    assert gen["promoted"] is False and gen["registry_version"] is None
    assert [(t["version"], t["key"], t["run_id"]) for t in gen["tuned_models"]] == [(1, summary["registry_key"], "b")]


def test_a_refused_promotion_is_reported_in_the_summary(tmp_path: Path) -> None:
    dev = tmp_path / "dev.csv"
    dev.write_bytes(b"fname,dialogue,summary\n")
    run_dir = fake_trial(tmp_path / "sweep", "a", 30.0, dev)
    export(run_dir / "best_model", math.nan)
    summary = summarize(tmp_path / "sweep", "s1", registry=tmp_path / "registry")
    assert summary["promoted"] is False and "holds NaN or infinite values" in summary["promotion_error"]
    assert not (tmp_path / "registry").exists()


# --------------------------------------------------------------------------------------------- hostile inputs
DAMAGES = {
    "nan": lambda meta: json.dumps({**meta, "metric": {**meta["metric"], "value": math.nan}}),
    "no_metric": lambda meta: json.dumps({k: v for k, v in meta.items() if k != "metric"}),
    "not_a_number": lambda meta: json.dumps({**meta, "metric": {**meta["metric"], "value": "high"}}),
    "invalid_json": lambda meta: json.dumps(meta)[:-7],
}
DAMAGE_MESSAGES = {"nan": r"metric\.value=nan is not finite", "no_metric": r"no metric\.value",
                   "not_a_number": r"metric\.value='high' is not a number", "invalid_json": r"not valid JSON \("}


def damage(version_dir: Path, how: str) -> Path:
    """Overwrite a version's meta.json the way a hand edit, a bad tool or a cut-short write would."""
    path = version_dir / "meta.json"
    path.write_text(DAMAGES[how](json.loads(path.read_text())))
    return path


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_incumbent_is_replaced_by_a_valid_candidate(tmp_path: Path, how: str, capsys) -> None:
    root = tmp_path / "registry"
    promote_if_better(export(tmp_path / "a"), 40.0, KEY, root, {"run_id": "a"})
    key_dir = root / KEY.slug()
    path = damage(key_dir / "v1", how)
    capsys.readouterr()
    # Before the fix a NaN incumbent blocked every later promotion; the others raised a traceback.
    promotion = promote_if_better(export(tmp_path / "b"), 10.0, KEY, root, {"run_id": "b"})
    assert (promotion.promoted, promotion.version, promotion.incumbent) == (True, 2, None)
    assert alias_version(key_dir) == 2 and current_best(key_dir)["replaced"] == 1
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and str(path) in warning[0] and "warning:" in warning[0]
    assert re.search(DAMAGE_MESSAGES[how], warning[0]), warning[0]
    # The new best is a normal incumbent again: a worse candidate loses to it.
    assert promote_if_better(export(tmp_path / "c"), 5.0, KEY, root).promoted is False


def test_a_best_alias_to_a_missing_version_is_replaced(tmp_path: Path, capsys) -> None:
    root = tmp_path / "registry"
    promote_if_better(export(tmp_path / "a"), 40.0, KEY, root)
    key_dir = root / KEY.slug()
    reg._point_alias(key_dir, "best", 7)
    assert promote_if_better(export(tmp_path / "b"), 10.0, KEY, root).version == 2
    assert "v7: no such version" in capsys.readouterr().err


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_damaged_meta_is_one_line_in_list_and_show(tmp_path: Path, how: str, capsys) -> None:
    root = tmp_path / "registry"
    for i, value in enumerate([30.0, 35.0]):
        promote_if_better(export(tmp_path / f"m{i}", float(i)), value, KEY, root, {"run_id": f"m{i}"})
    path = damage(root / KEY.slug() / "v1", how)
    capsys.readouterr()
    rows = registry_list(str(root))
    listing = capsys.readouterr().out.splitlines()
    assert rows[0]["versions"][1]["run_id"] == "m1" and rows[0]["versions"][0]["version"] == 1
    damaged = [line for line in listing if "damaged:" in line]
    assert len(damaged) == 1 and " v1  damaged: " in damaged[0] and str(path) in damaged[0]
    assert re.search(DAMAGE_MESSAGES[how], damaged[0])
    assert any("best -> v2  35.0000  run m1" in line for line in listing)
    with pytest.raises(RegistryError, match=re.escape(str(path)) + ": " + DAMAGE_MESSAGES[how]):
        registry_show(KEY.slug(), "v1", registry=str(root))
    # An alias never moves to a version that cannot be compared with.
    with pytest.raises(RegistryError, match=DAMAGE_MESSAGES[how]):
        registry_rollback(KEY.slug(), "v1", registry=str(root))
    assert alias_version(root / KEY.slug()) == 2


def test_damaged_registry_files_are_one_line_errors_on_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    promote_if_better(export(tmp_path / "a"), 30.0, KEY, root)
    path = damage(root / KEY.slug() / "v1", "invalid_json")
    cli = [sys.executable, "-m", "dsum.sweep", "registry"]
    done = subprocess.run([*cli, "show", KEY.slug(), "best", "--registry", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(path))}: not valid JSON \(Expecting .*: line 1 column \d+\)", line)


def test_the_sweep_summary_reports_a_damaged_registry_and_goes_on(tmp_path: Path) -> None:
    dev = tmp_path / "dev.csv"
    dev.write_bytes((SAMPLE / "dev.csv").read_bytes() + b"extra,row,x\n")
    root = tmp_path / "models" / "registry"
    fake_trial(tmp_path / "sweep", "a", 30.0, dev)
    first = summarize(tmp_path / "sweep", "s1", registry=root)
    key_dir = root / first["registry_key"]
    # A damaged incumbent: the sweep's best replaces it (before the fix: "not promoted" for ever, or a traceback).
    damage(key_dir / "v1", "nan")
    fake_trial(tmp_path / "sweep2", "b", 20.0, dev)
    second = summarize(tmp_path / "sweep2", "s1", registry=root)
    assert (second["promoted"], second["registry_version"]) == (True, 2)
    # A damaged key.json: reported in the summary, which is still written.
    (key_dir / "key.json").write_text("{")
    fake_trial(tmp_path / "sweep3", "c", 50.0, dev)
    third = summarize(tmp_path / "sweep3", "s1", registry=root)
    assert third["promoted"] is False and third["promotion_error"].startswith(f"{key_dir / 'key.json'}: not valid JSON")
    assert (tmp_path / "sweep3" / "s1_summary.json").is_file()
    # A generation sweep tuning a version whose meta.json is damaged: the summary names the problem, no traceback.
    damage(key_dir / "v2", "invalid_json")
    fake_trial(tmp_path / "gen", "g1", 36.5, dev, pretrained=str(key_dir / "best"), export_model=False)
    gen = summarize(tmp_path / "gen", "s1", registry=root)
    [tuned] = gen["tuned_models"]
    assert tuned["version"] is None and "best/meta.json: not valid JSON" in tuned["error"]


def tree(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.mark.parametrize("key", ["../../x", "no_such_key", "..", ".", "", "<absolute>"])
def test_rollback_and_show_refuse_unknown_keys_creating_nothing(tmp_path: Path, key: str) -> None:
    root = tmp_path / "a" / "b" / "registry"
    key = str(tmp_path / "abs") if key == "<absolute>" else key
    promote_if_better(export(tmp_path / "m"), 30.0, KEY, root)
    before = tree(tmp_path)
    for command in (registry_rollback, registry_show):
        with pytest.raises(RegistryError, match=rf"registry: no evaluation key {re.escape(repr(key))} \(keys: "
                                                rf"{re.escape(KEY.slug())}\)"):
            command(key, "v1", registry=str(root))
    assert tree(tmp_path) == before
    with pytest.raises(RegistryError, match=r"not an evaluation key of a registry \(no key\.json\)"):
        move_alias(root / "nokey", 1)
    assert not (root / "nokey").exists()


@pytest.mark.parametrize("version", ["vabc", "v0", "-1", "v1.5", "latest"])
def test_a_bad_version_names_the_valid_ones(tmp_path: Path, version: str) -> None:
    root = tmp_path / "registry"
    for i, value in enumerate([30.0, 35.0]):
        promote_if_better(export(tmp_path / f"m{i}", float(i)), value, KEY, root)
    for command in (registry_rollback, registry_show):
        with pytest.raises(RegistryError, match=rf"bad version {re.escape(repr(version))}: use v<N> or <N> "
                                                r"\(versions: v1, v2\)"):
            command(KEY.slug(), version, registry=str(root))
    assert alias_version(root / KEY.slug()) == 2


def test_rollback_cli_refuses_a_bad_key_and_a_bad_version_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "registry"
    promote_if_better(export(tmp_path / "m"), 30.0, KEY, root)
    before = tree(tmp_path)
    cli = [sys.executable, "-m", "dsum.sweep", "registry", "rollback"]
    for args, line in [(["../../x", "v1"], f"error: {root}: no evaluation key '../../x' (keys: {KEY.slug()})"),
                       ([KEY.slug(), "vabc"], f"error: {root / KEY.slug()}: bad version 'vabc': use v<N> or <N> "
                                              "(versions: v1)")]:
        done = subprocess.run([*cli, *args, "--registry", str(root)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0 and done.stderr.strip().splitlines() == [line], done.stderr
    assert tree(tmp_path) == before
