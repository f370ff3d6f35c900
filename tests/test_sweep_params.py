"""Sweep parameter mapping: aliases, presets, derived values, coercion, constraints, sweep run dirs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from dsum.secrets import REDACTED
from dsum.sweep import params as P
from dsum.sweep.params import SweepParamError, coerce_cli_string, map_params, rewrite_argv, valid_names

REPO = Path(__file__).resolve().parents[1]
KOBART = "configs/kobart.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(P.SWEEP_PARAMS_ENV, raising=False)


def overrides(args: list[str]) -> dict[str, str]:
    """``--key=value`` arguments as a dict (later ones win, as in LightningCLI)."""
    out = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------- aliases
@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("lr", 1e-05, "model.learning_rate", "1e-05"),
        ("learning_rate", 3e-05, "model.learning_rate", "3e-05"),
        ("train_batch_size", 16, "data.batch_size", "16"),
        ("per_device_train_batch_size", 8, "data.batch_size", "8"),
        ("batch_size", 4, "data.batch_size", "4"),
        ("eval_batch_size", 32, "data.eval_batch_size", "32"),
        ("per_device_eval_batch_size", 64, "data.eval_batch_size", "64"),
        ("encoder_max_len", 256, "data.encoder_max_len", "256"),
        ("decoder_max_len", 128, "data.decoder_max_len", "128"),
        ("weight_decay", 0.01, "model.weight_decay", "0.01"),
        ("warmup_ratio", 0.1, "model.warmup_ratio", "0.1"),
        ("num_train_epochs", 20, "trainer.max_epochs", "20"),
        ("epochs", 3, "trainer.max_epochs", "3"),
        ("lr_scheduler_type", "cosine_with_restarts", "model.lr_scheduler", "cosine_with_restarts"),
        ("scheduler", "constant_with_warmup", "model.lr_scheduler", "constant"),
        ("gradient_accumulation_steps", 4, "trainer.accumulate_grad_batches", "4"),
        ("label_smoothing", 0.1, "model.label_smoothing", "0.1"),
        ("label_smoothing_factor", 0.2, "model.label_smoothing", "0.2"),
        ("early_stopping_patience", 5, "early_stopping.patience", "5"),
        ("optim", "adamw_torch", "model.optimizer", "adamw"),
        ("optim", "adamw_hf", "model.optimizer", "adamw"),
        ("optimizer", "adamw", "model.optimizer", "adamw"),
        ("optim", "adafactor", "model.optimizer", "adafactor"),
        ("num_beams", 4, "model.generation.num_beams", "4"),
        ("no_repeat_ngram_size", 3, "model.generation.no_repeat_ngram_size", "3"),
        ("length_penalty", 1.2, "model.generation.length_penalty", "1.2"),
        ("generation_max_length", 120, "model.generation.max_new_tokens", "120"),
        ("max_new_tokens", 80, "model.generation.max_new_tokens", "80"),
        ("do_sample", True, "model.generation.do_sample", "true"),
        ("temperature", 0.7, "model.generation.temperature", "0.7"),
        ("top_p", 0.92, "model.generation.top_p", "0.92"),
        ("seed", 7, "seed_everything", "7"),
        ("fp16", True, "trainer.precision", "16-mixed"),
        ("fp16", False, "trainer.precision", "32-true"),
        ("bf16", True, "trainer.precision", "bf16-mixed"),
        ("max_tokens", 4096, "data.max_tokens", "4096"),
        ("batching", "random", "data.batching", "random"),
    ],
)
def test_alias_maps_to_cli_key(name: str, value: object, key: str, expected: str) -> None:
    args = map_params({name: value}, {}, log=None)
    assert overrides(args)[key] == expected


def test_every_alias_targets_a_known_root_and_valid_names_lists_them() -> None:
    roots = {*P.NATIVE_ROOTS, "seed_everything"}
    assert all(alias.key.split(".")[0] in roots for alias in P.ALIASES.values())
    names = valid_names()
    assert set(P.ALIASES) <= set(names)
    assert {"model_preset", "effective_batch_size"} <= set(names)


@pytest.mark.parametrize(("name", "value"), [("optim", "sgd"), ("scheduler", "polynomial"), ("fp16", "maybe")])
def test_value_outside_an_alias_map_is_refused_with_the_choices(name: str, value: str) -> None:
    with pytest.raises(SweepParamError, match=name) as err:
        map_params({name: value}, {}, log=None)
    assert "adamw_torch" in str(err.value) or "cosine" in str(err.value) or "true or false" in str(err.value)


def test_two_names_for_one_key_are_refused() -> None:
    with pytest.raises(SweepParamError, match="lr and learning_rate both set model.learning_rate"):
        map_params({"lr": 1e-5, "learning_rate": 3e-5}, {}, log=None)
    with pytest.raises(SweepParamError, match="fp16 and bf16 are both true"):
        map_params({"fp16": True, "bf16": True}, {}, log=None)
    assert overrides(map_params({"fp16": False, "bf16": True}, {}, log=None))["trainer.precision"] == "bf16-mixed"


# ------------------------------------------------------------------------------------------- presets
def test_preset_config_goes_right_after_the_base_config_so_later_overrides_win() -> None:
    out = rewrite_argv(
        ["fit", "--config", KOBART, "--trainer.max_epochs=3", "--model_preset=pko-t5-base", "--lr=1e-05"], {}
    )
    assert out == [
        "fit", "--config", KOBART,
        "--config=configs/pko-t5.yaml", "--model.pretrained=paust/pko-t5-base",
        "--trainer.max_epochs=3",
        "--model.learning_rate=1e-05",
    ]


def test_preset_without_base_config_goes_right_after_the_subcommand() -> None:
    out = rewrite_argv(["fit", "--model_preset", "kobart-summary-v3", "--trainer.max_epochs", "1"], {})
    assert out == ["fit", "--config=configs/kobart.yaml", "--model.pretrained=EbanLee/kobart-summary-v3",
                   "--trainer.max_epochs", "1"]


def test_preset_config_resolves_against_the_repo_root_from_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = rewrite_argv(["fit", "--model_preset=kogpt2"], {})
    assert out == ["fit", f"--config={REPO / 'configs' / 'kogpt2.yaml'}"]


def test_unknown_or_missing_preset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SweepParamError, match=r"model_preset='bart-large' is not one of: kobart, "):
        rewrite_argv(["fit", "--model_preset=bart-large"], {})
    monkeypatch.setitem(P.PRESETS, "ghost", P.Preset("configs/does-not-exist.yaml"))
    with pytest.raises(SweepParamError, match="needs configs/does-not-exist.yaml"):
        rewrite_argv(["fit", "--model_preset=ghost"], {})


def test_preset_settings_feed_the_constraints() -> None:
    # kogpt2.yaml: encoder_max_len 768, batch 8 -> a swept batch of 32 is capped at 16 (encoder > 512).
    args = overrides(rewrite_argv(["fit", "--model_preset=kogpt2", "--train_batch_size=32"], {}))
    assert args["data.batch_size"] == "16"
    assert args["trainer.accumulate_grad_batches"] == "2"


# ------------------------------------------------------------------------------------------- derived
@pytest.mark.parametrize(
    ("params", "base", "world", "accumulation"),
    [
        ({"effective_batch_size": 64}, {"data": {"batch_size": 16}}, 1, "4"),
        ({"effective_batch_size": 64}, {"data": {"batch_size": 16}}, 2, "2"),
        ({"effective_batch_size": 64, "train_batch_size": 8}, {"data": {"batch_size": 50}}, 2, "4"),
        ({"effective_batch_size": 8}, {"data": {"batch_size": 32}}, 1, "1"),  # never below 1
        ({"effective_batch_size": 100.0}, {"data": {"batch_size": 32}}, 1, "3"),  # round(3.125)
    ],
)
def test_effective_batch_size_sets_accumulation(params: dict, base: dict, world: int, accumulation: str) -> None:
    assert overrides(map_params(params, base, world_size=world, log=None))[
        "trainer.accumulate_grad_batches"] == accumulation


def test_effective_batch_size_reads_batch_and_devices_from_the_config_and_argv() -> None:
    # kobart.yaml: batch 50; 2 devices x 1 node from the command line -> round(200 / 100) = 2.
    out = rewrite_argv(["fit", "--config", KOBART, "--trainer.devices=2", "--effective_batch_size=200"], {})
    assert overrides(out)["trainer.accumulate_grad_batches"] == "2"
    # quickstart.yaml: accelerator cpu, devices 1, batch 16.
    out = rewrite_argv(["fit", "--config", "configs/quickstart.yaml", "--effective_batch_size=64",
                        "--trainer.num_nodes=2"], {})
    assert overrides(out)["trainer.accumulate_grad_batches"] == "2"


def test_world_size_resolution() -> None:
    assert P.world_size_of({"trainer.devices": [0, 1, 2], "trainer.num_nodes": 2}) == 6
    assert P.world_size_of({"trainer.devices": "0,1", "trainer.num_nodes": 1}) == 2
    assert P.world_size_of({"trainer.devices": "auto", "trainer.accelerator": "cpu"}) == 1
    assert P.world_size_of({"trainer.devices": 4.0}) == 4


def test_effective_batch_size_conflicts_with_swept_accumulation() -> None:
    with pytest.raises(SweepParamError, match="effective_batch_size and gradient_accumulation_steps"):
        map_params({"effective_batch_size": 64, "gradient_accumulation_steps": 2}, {}, world_size=1, log=None)


# ------------------------------------------------------------------------------------------- coercion
@pytest.mark.parametrize(
    ("raw", "coerced"),
    [
        ("64.0", "64"), ("-3.0", "-3"), ("64", "64"), ("1e-05", "1e-05"), ("0.5", "0.5"),
        ("None", "null"), ("True", "true"), ("False", "false"),
        ("[1, 2]", "[1, 2]"), ("[64.0, None, True]", "[64, null, true]"), ("['<usr>', '</s>']", '["<usr>", "</s>"]'),
        ("(1, 2)", "[1, 2]"), ("{'a': 1.0}", '{"a": 1}'),
        ("a; rm -rf / && echo $(id) | tee `x` > y", "a; rm -rf / && echo $(id) | tee `x` > y"),
        ("[not python", "[not python"), ("summarize: ", "summarize: "), ("", ""),
    ],
)
def test_coerce_cli_string(raw: str, coerced: str) -> None:
    assert coerce_cli_string(raw) == coerced


def test_agent_style_values_are_coerced_for_aliases_and_dotted_keys() -> None:
    out = rewrite_argv(
        ["fit", "--config", KOBART, "--train_batch_size=64.0", "--early_stopping_patience=None",
         "--do_sample=True", "--model.remove_tokens=['<usr>', '</s>']", "--data.eval_batch_size=16.0",
         "--trainer.max_epochs", "3.0", "--model.source=a;b $(c) | d"], {}
    )
    assert out[:3] == ["fit", "--config", KOBART]
    args = overrides(out)
    assert args["data.batch_size"] == "64"
    assert args["early_stopping.patience"] == "null"
    assert args["model.generation.do_sample"] == "true"
    assert args["model.remove_tokens"] == '["<usr>", "</s>"]'
    assert args["data.eval_batch_size"] == "16"
    assert args["model.source"] == "a;b $(c) | d"
    assert "--trainer.max_epochs" in out and out[out.index("--trainer.max_epochs") + 1] == "3"


def test_fraction_keys_keep_their_floats(tmp_path: Path) -> None:
    # Lightning: limit_train_batches=1.0 is all batches, =1 is one batch.
    out = rewrite_argv(["fit", "--trainer.limit_train_batches=1.0", "--trainer.val_check_interval", "1.0",
                        "--trainer.max_epochs=2.0"], {})
    assert out == ["fit", "--trainer.limit_train_batches=1.0", "--trainer.val_check_interval", "1.0",
                   "--trainer.max_epochs=2"]
    path = write_param_file(tmp_path / "p.yaml", {"trainer.limit_val_batches": 1.0, "lr": 1e-5})
    args = overrides(rewrite_argv(["fit"], {"WANDB_SWEEP_PARAM_PATH": str(path)}))
    assert args["trainer.limit_val_batches"] == "1.0"
    assert overrides(map_params({"trainer.overfit_batches": 1.0}, {}, log=None))["trainer.overfit_batches"] == "1.0"


def test_space_separated_and_bare_boolean_forms() -> None:
    out = rewrite_argv(["fit", "--lr", "1e-05", "--do_sample", "--num_beams", "4", "--seed", "-1"], {})
    assert overrides(out) == {"model.learning_rate": "1e-05", "model.generation.do_sample": "true",
                              "model.generation.num_beams": "4", "seed_everything": "-1"}


def test_native_arguments_pass_through_in_order() -> None:
    argv = ["fit", "-c", "a.yaml", "--config=b.yaml", "--print_config=skip_null", "--ckpt_path", "last.ckpt",
            "--seed_everything", "7", "--model=dsum.models.CausalLMSummarizer", "--trainer.max_epochs", "3",
            "--data.batch_size=8", "--checkpoint.save_top_k=2", "--early_stopping.patience=5",
            "--outputs.export_best=false", "--submission.path=s.csv", "--trainer.callbacks+=X", "-h", "--help"]
    assert rewrite_argv(argv, {}) == argv


# ------------------------------------------------------------------------------------------- errors
def test_unknown_name_is_refused_with_the_valid_names() -> None:
    with pytest.raises(SweepParamError) as err:
        rewrite_argv(["fit", "--config", KOBART, "--learnig_rate=1e-5"], {})
    message = str(err.value)
    assert "unknown sweep parameter 'learnig_rate'" in message
    assert "Did you mean learning_rate" in message
    for name in ("train_batch_size", "model_preset", "effective_batch_size", "kobart-base-v2", "data."):
        assert name in message
    with pytest.raises(SweepParamError, match="dotted keys must start with one of model., data."):
        rewrite_argv(["fit", "--optimizer.lr=1"], {})
    with pytest.raises(SweepParamError, match="has no value"):
        rewrite_argv(["fit", "--lr"], {})
    with pytest.raises(SweepParamError, match="unknown sweep parameter 'foo'"):
        map_params({"foo": 1}, {}, log=None)


def test_unknown_name_in_the_param_file_is_refused(tmp_path: Path) -> None:
    path = write_param_file(tmp_path / "p.yaml", {"lr": 1e-5, "dropout": 0.1})
    with pytest.raises(SweepParamError, match=r"unknown sweep parameter 'dropout' \(from WANDB_SWEEP_PARAM_PATH"):
        rewrite_argv(["fit"], {"WANDB_SWEEP_PARAM_PATH": str(path)})


# ------------------------------------------------------------------------------------------- constraints
@pytest.mark.parametrize(
    ("encoder", "batch", "accumulation", "new_batch", "new_accumulation"),
    [
        (512, 64, 1, None, None),  # at the threshold: untouched
        (1024, 32, 1, "16", "2"),  # > 512: cap 16, effective 32 kept
        (1024, 50, 1, "16", "3"),
        (1024, 8, 1, None, None),
        (2048, 64, 1, "8", "8"),  # > 1024: cap 8
        (2048, 32, 2, "8", "8"),
        (2048, 4, 1, None, "2"),  # > 1024: accumulation >= 2 even without a cap
    ],
)
def test_length_constraints_cap_the_batch_and_keep_the_effective_batch(
        encoder: int, batch: int, accumulation: int, new_batch: str | None, new_accumulation: str | None,
        capsys: pytest.CaptureFixture[str]) -> None:
    base = {"data": {"batch_size": batch}, "trainer": {"accumulate_grad_batches": accumulation}}
    args = overrides(map_params({"encoder_max_len": encoder}, base))
    assert args.get("data.batch_size") == new_batch
    assert args.get("trainer.accumulate_grad_batches") == new_accumulation
    err = capsys.readouterr().err
    if new_batch or new_accumulation:
        assert err.count("\n") == 1 and err.startswith("dsum.sweep: data.encoder_max_len=")
    else:
        assert err == ""


@pytest.mark.parametrize("from_config", [True, False])
def test_token_budget_raises_max_tokens_instead_of_capping(
        from_config: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "budget.yaml"
    config.write_text("data:\n  batch_size: 64\n  max_tokens: 1000\n" + ("  batching: token_budget\n" if from_config else ""))
    argv = ["fit", "--config", str(config), "--encoder_max_len=1024", "--decoder_max_len=128"]
    if not from_config:
        argv.append("--data.batching=token_budget")
    args = overrides(rewrite_argv(argv, {}))
    assert args["data.max_tokens"] == "1152"
    assert "data.batch_size" not in args
    assert "trainer.accumulate_grad_batches" not in args
    assert capsys.readouterr().err.startswith("dsum.sweep: data.max_tokens 1000 < encoder_max_len + decoder_max_len")


def test_token_budget_keeps_a_sufficient_budget_and_fills_a_missing_one() -> None:
    base = {"data": {"batching": "token_budget", "max_tokens": 8192, "batch_size": 64}}
    assert "data.max_tokens" not in overrides(map_params({"encoder_max_len": 1024}, base, log=None))
    args = overrides(map_params({"batching": "token_budget", "encoder_max_len": 1024, "decoder_max_len": 128},
                                {"data": {"batch_size": 16}}, log=None))
    assert args["data.max_tokens"] == str(16 * 1152)


# ------------------------------------------------------------------------------------------- sweep runs
def write_param_file(path: Path, params: dict) -> Path:
    """The file a wandb agent writes for a run (wandb's own writer)."""
    from wandb.sdk.lib import config_util

    config_util.save_config_file_from_dict(str(path), {k: {"value": v} for k, v in params.items()})
    return path


AGENT_PARAMS = {
    "learning_rate": 3.2e-05, "train_batch_size": 32.0, "encoder_max_len": 1024, "fp16": True,
    "early_stopping_patience": None, "optim": "adamw_torch", "model.remove_tokens": ["<usr>"],
    "model.generation.length_penalty": 1.0, "effective_batch_size": 64,
}


def test_param_file_path_gives_the_same_command_as_args(tmp_path: Path) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    path = write_param_file(tmp_path / "config-run1.yaml", AGENT_PARAMS)
    base = ["fit", "--config", KOBART, "--trainer.devices=1"]
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in AGENT_PARAMS.items()}})["args"]
    env_args: dict[str, str] = {"WANDB_SWEEP_PARAM_PATH": str(path)}
    env_file: dict[str, str] = {"WANDB_SWEEP_PARAM_PATH": str(path)}
    env_plain: dict[str, str] = {}
    with_args = rewrite_argv(base + args, env_args)
    from_file = rewrite_argv(base, env_file)
    without_file = rewrite_argv(base + args, env_plain)
    assert overrides(with_args) == overrides(from_file) == overrides(without_file)
    assert sorted(with_args) == sorted(from_file)
    assert json.loads(env_args[P.SWEEP_PARAMS_ENV]) == json.loads(env_file[P.SWEEP_PARAMS_ENV])
    assert json.loads(env_file[P.SWEEP_PARAMS_ENV]) == {
        "learning_rate": 3.2e-05, "train_batch_size": 32, "encoder_max_len": 1024, "fp16": True,
        "early_stopping_patience": None, "optim": "adamw_torch", "model.remove_tokens": ["<usr>"],
        "model.generation.length_penalty": 1, "effective_batch_size": 64,
    }
    args_map = overrides(with_args)
    assert args_map["data.batch_size"] == "16" and args_map["trainer.accumulate_grad_batches"] == "4"
    assert args_map["trainer.precision"] == "16-mixed" and args_map["model.optimizer"] == "adamw"


def test_argv_wins_over_the_param_file(tmp_path: Path) -> None:
    path = write_param_file(tmp_path / "p.yaml", {"lr": 1e-4, "num_beams": 8})
    out = rewrite_argv(["fit", "--lr=1e-05"], {"WANDB_SWEEP_PARAM_PATH": str(path)})
    assert overrides(out) == {"model.learning_rate": "1e-05", "model.generation.num_beams": "8"}


def test_missing_param_file_without_argv_params_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SweepParamError, match="WANDB_SWEEP_PARAM_PATH=.* does not exist"):
        rewrite_argv(["fit"], {"WANDB_SWEEP_PARAM_PATH": str(tmp_path / "nope.yaml")})
    # With the params on the command line the file is not needed.
    assert rewrite_argv(["fit", "--lr=1e-05"], {"WANDB_SWEEP_PARAM_PATH": str(tmp_path / "nope.yaml")})


def test_each_trial_gets_its_own_run_dir() -> None:
    env = {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run7"}
    assert rewrite_argv(["fit", "--lr=1e-05"], env)[-1] == "--trainer.default_root_dir=outputs/sweeps/sw1/runs/run7"
    assert rewrite_argv(["fit"], {**env, "DSUM_SWEEP_DIR": "/data/sw"})[-1] == \
        "--trainer.default_root_dir=/data/sw/runs/run7"
    explicit = ["fit", "--trainer.default_root_dir", "mine", "--lr=1e-05"]
    assert not any(a.startswith("--trainer.default_root_dir=") for a in rewrite_argv(explicit, dict(env)))
    assert not any("default_root_dir" in a for a in rewrite_argv(["fit", "--lr=1e-05"], {}))


def test_sweep_params_env_is_redacted(tmp_path: Path) -> None:
    secret = "sekrit-abcdef-123"
    swept = {"model.pretrained": secret, "model.hf_token": "xyz123456", "lr": 1e-05}
    env = {"WANDB_API_KEY": secret, "WANDB_SWEEP_PARAM_PATH": str(write_param_file(tmp_path / "p.yaml", swept))}
    out = rewrite_argv(["fit"], env)
    assert f"--model.pretrained={secret}" in out  # the run itself gets the real value
    assert json.loads(env[P.SWEEP_PARAMS_ENV]) == {"model.pretrained": REDACTED, "model.hf_token": REDACTED, "lr": 1e-05}
    assert secret not in env[P.SWEEP_PARAMS_ENV]


def test_rewrite_is_deterministic_and_logs_on_rank_zero_only(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", "--config", KOBART, "--encoder_max_len=2048"]
    first = rewrite_argv(argv, {})
    assert capsys.readouterr().err.startswith("dsum.sweep:")
    assert rewrite_argv(argv, {"LOCAL_RANK": "1"}) == first
    assert capsys.readouterr().err == ""


def test_plain_runs_are_left_alone() -> None:
    argv = ["fit", "--config", KOBART, "--data.encoder_max_len=2048"]
    env: dict[str, str] = {}
    assert rewrite_argv(argv, env) == argv
    assert P.SWEEP_PARAMS_ENV not in env


# ------------------------------------------------------------------------------------------- defaults
def test_defaults_match_the_data_module_and_trainer() -> None:
    from lightning.pytorch import Trainer

    from dsum.data import DialogueDataModule

    data = inspect.signature(DialogueDataModule.__init__).parameters
    trainer = inspect.signature(Trainer.__init__).parameters
    for key, value in P.DEFAULTS.items():
        root, name = key.split(".")
        assert (data if root == "data" else trainer)[name].default == value, key
