"""Sweep YAMLs: the shipped ones load, validate, map and parse; each kind of mistake is named."""

from __future__ import annotations

import copy
import math
import random
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

from dsum.callbacks.record import SWEEP_PARAMS_ENV
from dsum.sweep import mapping as P
from dsum.sweep.spec import SweepSpecError, SweepSpecWarning, load_sweep, sample_params, validate_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
EXPECTED = {"hyperparameter", "model_comparison", "generation_params", "ablation_study", "quick", "llm_lora"}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(SWEEP_PARAMS_ENV, raising=False)


def command_args(config: dict[str, Any]) -> list[str]:
    """The literal arguments after the program and before any macro-expanded ones."""
    items = [str(c) for c in config["command"]]
    rest = items[items.index("${program}") + 1:]
    return [c for c in rest if not c.startswith("${")]


# ------------------------------------------------------------------------------------------- shipped sweeps
def test_all_sweeps_are_shipped() -> None:
    assert {p.stem for p in SWEEPS} == EXPECTED


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweep_is_valid(path: Path) -> None:
    config = load_sweep(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_sweep(config, path)
    assert config["metric"] == {"name": "val/rouge_mean", "goal": "maximize"}
    assert config["program"] == "main.py"
    assert config["command"][:3] == ["${env}", "${interpreter}", "${program}"]
    assert config["command"][-1] == "${args}"
    if config["method"] != "grid":
        assert config["run_cap"] > 0


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_draw_of_a_shipped_sweep_maps(path: Path) -> None:
    config = load_sweep(path)
    for seed in range(20):
        params = sample_params(config, random.Random(seed))
        assert set(params) == set(config["parameters"])
        args = P.sweep_trial(agent_argv(config, params), {}).cli_args
        for arg in args[len(command_args(config)):]:
            key = arg[2:].partition("=")[0]
            assert key in ("config", "seed_everything") or key.split(".")[0] in P.ROOTS, arg


def test_hyperparameter_sweep_keeps_the_original_space() -> None:
    config = load_sweep(REPO / "sweeps" / "hyperparameter.yaml")
    params = config["parameters"]
    assert config["method"] == "bayes" and config["run_cap"] == 50
    assert config["early_terminate"] == {"type": "hyperband", "min_iter": 3}
    assert params["learning_rate"] == {"distribution": "log_uniform_values", "min": 1e-6, "max": 1e-4}
    assert params["train_batch_size"]["values"] == [8, 16, 32, 64]
    assert params["encoder_max_len"]["values"] == [256, 512, 1024]
    assert "constraints" not in config


def test_model_comparison_pairs_each_family_with_its_own_checkpoint() -> None:
    config = load_sweep(REPO / "sweeps" / "model_comparison.yaml")
    presets = config["parameters"]["model_preset"]["values"]
    assert {"kobart", "kogpt2", "pko-t5-small", "mt5-small"} <= set(presets)
    assert not {"model_name", "architecture", "model.pretrained", "pretrained"} & set(config["parameters"])


# ------------------------------------------------------------------------------------------- bad configs
def base_config() -> dict[str, Any]:
    return copy.deepcopy(load_sweep(REPO / "sweeps" / "quick.yaml"))


def with_param(name: str, spec: Any, method: str | None = None) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        config["parameters"][name] = spec
        if method:
            config["method"] = method
            config["run_cap"] = 5
    return edit


def setting(key: str, value: Any) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return edit


BAD_CASES: list[tuple[str, Callable[[dict], None], list[str]]] = [
    ("constraints", setting("constraints", {"encoder_max_len": {"gt": 512}}), ["constraints:", "delete this key"]),
    ("unknown_top_level", setting("optimizer", "adam"), ["optimizer: unknown top-level key"]),
    ("method", setting("method", "hyperopt"), ["method: must be one of grid, random, bayes"]),
    ("bayes_without_metric", lambda c: (c.update(method="bayes"), c.pop("metric")), ["metric: bayes search needs"]),
    ("metric_name", setting("metric", {"name": "val/rouge", "goal": "maximize"}), ["metric.name: 'val/rouge'"]),
    ("metric_goal", setting("metric", {"name": "val/rouge_mean", "goal": "max"}), ["metric.goal: must be"]),
    ("metric_goal_missing", setting("metric", {"name": "val/rouge_mean"}), ["metric.goal: missing"]),
    ("metric_wrong_way", setting("metric", {"name": "val/rouge_mean", "goal": "minimize"}), ["wrong way"]),
    ("unknown_param", with_param("learnig_rate", {"values": [1e-5]}),
     ["parameters.learnig_rate: maps to no CLI key", "Did you mean learning_rate"]),
    ("unknown_root", with_param("optimizer.lr", {"values": [1e-5]}), ["parameters.optimizer.lr: maps to no CLI key"]),
    ("grid_continuous", with_param("length_penalty", {"distribution": "uniform", "min": 0.5, "max": 2.0}),
     ["parameters.length_penalty: grid search cannot use the continuous distribution uniform"]),
    ("grid_inferred_uniform", with_param("temperature", {"min": 0.5, "max": 1.5}),
     ["parameters.temperature: grid search cannot use"]),
    ("grid_probabilities", with_param("num_beams", {"values": [1, 2], "probabilities": [0.5, 0.5]}),
     ["parameters.num_beams: grid search does not accept probabilities"]),
    ("log_uniform_values_as_exponents",
     with_param("learning_rate", {"distribution": "log_uniform", "min": 1e-6, "max": 1e-4}, "random"),
     ["parameters.learning_rate: log_uniform takes natural-log exponents", "log_uniform_values"]),
    ("int_uniform_inferred_for_float", with_param("warmup_ratio", {"min": 0, "max": 1}, "random"),
     ["parameters.warmup_ratio: {min: 0, max: 1} without a distribution is read by W&B as int_uniform"]),
    ("float_draws_for_int_key",
     with_param("train_batch_size", {"distribution": "uniform", "min": 8, "max": 64}, "random"),
     ["parameters.train_batch_size: data.batch_size takes integers"]),
    ("float_values_for_int_key", with_param("num_beams", {"values": [1, 2.5]}),
     ["parameters.num_beams: model.generation.num_beams takes integers, got 2.5"]),
    ("bad_bool", with_param("do_sample", {"values": ["yes"]}), ["parameters.do_sample: do_sample takes true or false"]),
    ("bad_choice", with_param("optim", {"values": ["sgd"]}), ["parameters.optim: optim='sgd' is not one of"]),
    ("bad_preset", with_param("model_preset", {"values": ["kobart", "bart-large"]}),
     ["parameters.model_preset: unknown preset 'bart-large'"]),
    ("same_key_twice", with_param("lr", {"values": [1e-5]}),
     ["parameters.lr: sets model.learning_rate, as parameters.learning_rate does"]),
    ("min_above_max", with_param("length_penalty", {"distribution": "uniform", "min": 2.0, "max": 1.0}, "random"),
     ["parameters.length_penalty: min (2.0) must be below max (1.0)"]),
    ("log_values_nonpositive",
     with_param("learning_rate", {"distribution": "log_uniform_values", "min": 0, "max": 1e-4}, "random"),
     ["parameters.learning_rate: log_uniform_values needs min > 0"]),
    ("unknown_distribution", with_param("length_penalty", {"distribution": "gaussian", "mu": 1}),
     ["parameters.length_penalty: unknown distribution 'gaussian'"]),
    ("missing_bounds", with_param("length_penalty", {"distribution": "uniform", "min": 1.0}),
     ["parameters.length_penalty: distribution uniform needs max"]),
    ("stray_key", with_param("num_beams", {"values": [1, 2], "max": 3}),
     ["parameters.num_beams: keys max do not belong to distribution categorical"]),
    ("probabilities_sum", with_param("num_beams", {"values": [1, 2], "probabilities": [0.5, 0.6]}, "random"),
     ["parameters.num_beams: probabilities must be non-negative and sum to 1"]),
    ("nested", with_param("model", {"parameters": {"learning_rate": {"values": [1e-5]}}}),
     ["parameters.model: maps to no CLI key"]),
    ("nested_dotted", with_param("model.generation", {"parameters": {"num_beams": {"values": [1]}}}),
     ["parameters.model.generation: nested parameters are not supported"]),
    ("accumulation_twice", lambda c: c["parameters"].update(
        effective_batch_size={"values": [64]}, gradient_accumulation_steps={"values": [2]}),
     ["parameters.effective_batch_size: derives trainer.accumulate_grad_batches"]),
    ("precision_twice", lambda c: c["parameters"].update(fp16={"values": [True]}, bf16={"values": [False]}),
     ["parameters.bf16: sets trainer.precision, as parameters.fp16 does"]),
    ("no_command", setting("command", None), ["command: missing"]),
    ("string_command", setting("command", "${env} ${interpreter} ${program} fit ${args}"),
     ["command: must be a YAML block list"]),
    ("no_program", setting("command", ["python", "train.py", "fit", "${args}"]), ["command: must run main.py"]),
    ("no_subcommand", setting("command", ["${env}", "${interpreter}", "${program}", "${args}"]),
     ["command: the item after the program must be a subcommand"]),
    ("joined_item", setting("command", ["${program}", "fit", "--config configs/quickstart.yaml", "${args}"]),
     ["'--config configs/quickstart.yaml' holds several arguments"]),
    ("json_macro", setting("command", ["${program}", "fit", "${args_json}"]), ["command: ${args_json} expands to"]),
    ("unknown_command_option", setting("command", ["${program}", "fit", "--lrr=1", "${args}"]),
     ["command: unknown sweep parameter 'lrr'"]),
    ("missing_config", setting("command", ["${program}", "fit", "--config", "configs/nope.yaml", "${args}"]),
     ["command: config file configs/nope.yaml not found"]),
    ("program_not_main", setting("program", "train.py"), ["program: 'train.py' is not dsum's main.py"]),
    ("hyperband_bad", setting("early_terminate", {"type": "hyperband", "eta": 3}),
     ["early_terminate: hyperband needs min_iter"]),
    ("run_cap_bad", setting("run_cap", 0), ["run_cap: must be a positive integer"]),
    ("no_parameters", setting("parameters", {}), ["parameters: must be a non-empty mapping"]),
]


@pytest.mark.parametrize(("edit", "expected"), [(e, x) for _, e, x in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_sweep_is_refused_naming_the_fault(edit: Callable[[dict], None], expected: list[str]) -> None:
    config = base_config()
    edit(config)
    with pytest.raises(SweepSpecError) as err:
        validate_sweep(config, "sweeps/bad.yaml")
    message = str(err.value)
    assert message.startswith("sweeps/bad.yaml: invalid sweep config:")
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(("name", "key"), [("max_nonfinite_steps", "divergence.max_nonfinite_steps"),
                                         ("save_every_n_steps", "last_checkpoint.every_n_train_steps")])
def test_int_keys_the_hand_kept_tables_missed_refuse_fractions(name: str, key: str) -> None:
    """Their types come from the CLI parser now; the old tables did not list them, so both passed."""
    for spec, fragment in (({"values": [2.5]}, f"parameters.{name}: {key} takes integers, got 2.5"),
                           ({"min": 0.5, "max": 3.5}, f"parameters.{name}: {key} takes integers but uniform draws")):
        config = base_config()
        with_param(name, spec, "random")(config)
        with pytest.raises(SweepSpecError, match=re.escape(fragment)):
            validate_sweep(config, "sweeps/bad.yaml")


def test_all_problems_are_reported_at_once() -> None:
    config = base_config()
    config["constraints"] = {}
    config["parameters"]["dropout"] = {"values": [0.1]}
    with pytest.raises(SweepSpecError) as err:
        validate_sweep(config)
    assert "constraints:" in str(err.value) and "parameters.dropout" in str(err.value)


def test_endless_random_search_warns() -> None:
    config = base_config()
    config["method"] = "random"
    del config["run_cap"]
    with pytest.warns(SweepSpecWarning, match="without run_cap"):
        validate_sweep(config)


def test_zero_one_int_uniform_on_a_key_of_unknown_type_warns() -> None:
    config = base_config()
    config["method"] = "random"
    config["parameters"]["model.some_fraction"] = {"min": 0, "max": 1}
    with pytest.warns(SweepSpecWarning, match="parameters.model.some_fraction: {min: 0, max: 1}"):
        validate_sweep(config)


def test_load_sweep_explains_yaml_mistakes(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("method: grid\ncommand: [${env}, ${interpreter}, ${program}, fit, ${args}]\n")
    with pytest.raises(SweepSpecError, match="block list"):
        load_sweep(flow)
    with pytest.raises(SweepSpecError, match="cannot read sweep config"):
        load_sweep(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SweepSpecError, match="must be a YAML mapping, got list"):
        load_sweep(listing)


# ------------------------------------------------------------------------------------------- sampling
def test_sample_params_draws_from_each_distribution() -> None:
    config = {"parameters": {
        "a": {"value": 3},
        "b": {"values": ["x", "y"]},
        "c": {"values": ["p", "q"], "probabilities": [0.0, 1.0]},
        "d": {"min": 1, "max": 3},
        "e": {"min": 0.5, "max": 1.5},
        "f": {"distribution": "log_uniform_values", "min": 1e-6, "max": 1e-4},
        "g": {"distribution": "log_uniform", "min": -2.0, "max": 0.0},
        "h": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
        "i": {"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 1},
        "j": {"distribution": "normal", "mu": 5.0, "sigma": 0.0},
        "k": {"distribution": "inv_log_uniform_values", "min": 0.1, "max": 1.0},
    }}
    seen_d = set()
    for seed in range(200):
        s = sample_params(config, random.Random(seed))
        assert s["a"] == 3 and s["b"] in ("x", "y") and s["c"] == "q"
        assert isinstance(s["d"], int) and 1 <= s["d"] <= 3
        seen_d.add(s["d"])
        assert isinstance(s["e"], float) and 0.5 <= s["e"] <= 1.5
        assert 1e-6 <= s["f"] <= 1e-4
        assert math.exp(-2) <= s["g"] <= 1.0
        assert s["h"] in range(0, 11, 2)
        assert 1 <= s["i"] <= 100 and float(s["i"]).is_integer()
        assert s["j"] == 5.0
        assert 0.1 <= s["k"] <= 1.0
    assert seen_d == {1, 2, 3}
    assert sample_params(config, random.Random(1)) == sample_params(config, random.Random(1))


# ------------------------------------------------------------------------------------------- agent command
def agent_argv(config: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The exact argv (after the program) a wandb agent runs for these params, built with wandb's own code."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    command = {"args": {k: {"value": v} for k, v in params.items()}, "program": config["program"]}
    sweep_vars = create_sweep_command_args(command)
    sweep_vars.update(interpreter=["python"], program=[command["program"]], env=["/usr/bin/env"])
    command_list: list[str] = []
    for item in create_sweep_command(list(config["command"])):  # as wandb_agent.Agent._command_run does
        item = str(item)
        if item.startswith("${") and item.endswith("}"):
            command_list += sweep_vars.get(item[2:-1]) or []
        else:
            command_list.append(item)
    assert command_list[:3] == ["/usr/bin/env", "python", "main.py"]
    return command_list[3:]


@pytest.fixture(scope="module")
def parse_only() -> type:
    """DsumCLI that parses and validates a command line, instantiating nothing and running nothing."""
    from dsum.cli import DsumCLI  # an import error here fails the tests; it never skips them

    class ParseOnly(DsumCLI):
        def instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str | None) -> None:
            pass

    return ParseOnly


def get(namespace: Any, dotted: str) -> Any:
    """A value from the parsed config, by the dotted key the sweep mapping uses."""
    root, *rest = dotted.split(".")
    node = namespace[root]
    if root == "model":
        node = node["init_args"]
    for part in rest:
        node = node[part]
    return node


def agent_cases() -> list[tuple[str, int]]:
    cases = [(p.stem, seed) for p in SWEEPS for seed in range(2)]
    comparison = load_sweep(REPO / "sweeps" / "model_comparison.yaml")
    cases += [("model_comparison", 100 + i) for i in range(len(comparison["parameters"]["model_preset"]["values"]))]
    return cases


@pytest.mark.parametrize(("stem", "seed"), agent_cases())
def test_agent_command_parses_with_the_cli(stem: str, seed: int, parse_only: type, tmp_path: Path) -> None:
    config = load_sweep(REPO / "sweeps" / f"{stem}.yaml")
    params = sample_params(config, random.Random(seed))
    if seed >= 100:  # walk every preset once
        params["model_preset"] = config["parameters"]["model_preset"]["values"][seed - 100]
    argv = agent_argv(config, params)
    env = {"WANDB_SWEEP_ID": "sweep1", "WANDB_RUN_ID": f"run{seed}", "DSUM_SWEEP_DIR": str(tmp_path)}
    trial = P.sweep_trial(argv, env)
    rewritten = trial.cli_args
    assert rewritten[0] == config["command"][3]
    assert rewritten[-1] == f"--trainer.default_root_dir={tmp_path}/runs/run{seed}"

    cli = parse_only(args=rewritten, config_hooks=[trial.apply_rules])
    parsed = cli.config[rewritten[0]]
    assert parsed.trainer.default_root_dir == f"{tmp_path}/runs/run{seed}"
    for name, value in params.items():
        if name == "model_preset":
            expected = P.PRESETS[value][1].get("model.pretrained")
            if expected:
                assert get(parsed, "model.pretrained") == expected
            continue
        if name in P.DERIVED:
            continue
        key, mapped = P.map_value(name, value)
        if key in ("data.batch_size", "trainer.accumulate_grad_batches"):
            continue  # the length constraints may have capped it (tests/test_sweep_params.py checks the rule)
        actual = get(parsed, key)
        if isinstance(mapped, float):
            assert actual == pytest.approx(mapped), name
        else:
            assert actual == mapped, name
