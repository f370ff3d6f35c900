"""Sweep parameter mapping: aliases, presets, derived values, W&B value formats, constraints, sweep run dirs.

Commands are parsed by the real LightningCLI parser (no class is instantiated), so a test sees the typed value
that a trial's model, data module or trainer would receive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from jsonargparse import Namespace

from dsum.callbacks.record import SWEEP_PARAMS_ENV
from dsum.cli import DsumCLI
from dsum.infra.secrets import REDACTED
from dsum.sweep import mapping as M
from dsum.sweep.mapping import EffectiveBatchSize, SweepParamError, split_argv, sweep_trial

REPO = Path(__file__).resolve().parents[1]
KOBART = "configs/kobart.yaml"
QUICK = "configs/quickstart.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(SWEEP_PARAMS_ENV, raising=False)
    monkeypatch.delenv("WANDB_SWEEP_PARAM_PATH", raising=False)


class _ParseOnly(DsumCLI):
    def instantiate_classes(self) -> None:  # parse, type and run the config hooks; build nothing
        pass


def resolved(argv: list[str], environ: dict[str, str] | None = None) -> Namespace:
    """The typed config a trial started with ``argv`` would get (subcommand-free, as ``run=False`` parses)."""
    trial = sweep_trial(argv, {} if environ is None else environ)
    return _ParseOnly(args=trial.cli_args, run=False, config_hooks=[trial.apply_rules]).config


def get(config: Namespace, key: str) -> object:
    node = config
    for part in key.split("."):
        node = node["init_args"][part] if "init_args" in node and part not in node else node[part]
    return node


# ------------------------------------------------------------------------------------------- aliases
@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("lr", "1e-05", "model.learning_rate", 1e-05),
        ("learning_rate", "3e-05", "model.learning_rate", 3e-05),
        ("train_batch_size", "16.0", "data.batch_size", 16),
        ("per_device_train_batch_size", "8", "data.batch_size", 8),
        ("batch_size", "4", "data.batch_size", 4),
        ("eval_batch_size", "32", "data.eval_batch_size", 32),
        ("per_device_eval_batch_size", "64.0", "data.eval_batch_size", 64),
        ("encoder_max_len", "256", "data.encoder_max_len", 256),
        ("decoder_max_len", "128", "data.decoder_max_len", 128),
        ("weight_decay", "0.01", "model.weight_decay", 0.01),
        ("warmup_ratio", "0.1", "model.warmup_ratio", 0.1),
        ("num_train_epochs", "20.0", "trainer.max_epochs", 20),
        ("epochs", "3", "trainer.max_epochs", 3),
        ("lr_scheduler_type", "cosine_with_restarts", "model.lr_scheduler", "cosine_with_restarts"),
        ("scheduler", "constant_with_warmup", "model.lr_scheduler", "constant"),
        ("gradient_accumulation_steps", "4", "trainer.accumulate_grad_batches", 4),
        ("max_grad_norm", "1.0", "trainer.gradient_clip_val", 1.0),
        ("label_smoothing", "0.1", "model.label_smoothing", 0.1),
        ("label_smoothing_factor", "0.2", "model.label_smoothing", 0.2),
        ("early_stopping_patience", "5", "early_stopping.patience", 5),
        ("early_stopping_patience", "None", "early_stopping.patience", None),
        ("optim", "adamw_torch", "model.optimizer", "adamw"),
        ("optim", "adamw_hf", "model.optimizer", "adamw"),
        ("optimizer", "adamw", "model.optimizer", "adamw"),
        ("optim", "adafactor", "model.optimizer", "adafactor"),
        ("num_beams", "4", "model.generation.num_beams", 4),
        ("no_repeat_ngram_size", "3", "model.generation.no_repeat_ngram_size", 3),
        ("length_penalty", "1.2", "model.generation.length_penalty", 1.2),
        ("generation_max_length", "120", "model.generation.max_new_tokens", 120),
        ("max_new_tokens", "80", "model.generation.max_new_tokens", 80),
        ("do_sample", "True", "model.generation.do_sample", True),
        ("temperature", "0.7", "model.generation.temperature", 0.7),
        ("top_p", "0.92", "model.generation.top_p", 0.92),
        ("seed", "7", "seed_everything", 7),
        ("fp16", "True", "trainer.precision", "16-mixed"),
        ("fp16", "False", "trainer.precision", "32-true"),
        ("bf16", "True", "trainer.precision", "bf16-mixed"),
        ("max_tokens", "4096", "data.max_tokens", 4096),
        ("batching", "random", "data.batching", "random"),
    ],
)
def test_each_alias_reaches_its_typed_option(name: str, value: str, key: str, expected: object) -> None:
    config = resolved(["--config", QUICK, f"--{name}={value}"])
    assert get(config, key) == expected


def test_every_alias_targets_a_known_root_and_valid_names_lists_them() -> None:
    assert all(alias.key.split(".")[0] in {*M.ROOTS, "seed_everything"} for alias in M.ALIASES.values())
    assert {*M.ALIASES, "model_preset", "effective_batch_size", "learning_rate_scale"} <= set(M.valid_names())


@pytest.mark.parametrize(("name", "value", "choices"),
                         [("optim", "sgd", "adamw_torch"), ("scheduler", "polynomial", "cosine"), ("fp16", "maybe", "True")])
def test_value_outside_an_alias_map_is_refused_with_the_choices(name: str, value: str, choices: str) -> None:
    with pytest.raises(SweepParamError, match=f"{name}='{value}' is not one of: .*{choices}"):
        sweep_trial(["fit", f"--{name}={value}"], {})


def test_two_names_for_one_key_are_refused() -> None:
    with pytest.raises(SweepParamError, match="lr and learning_rate both set model.learning_rate"):
        sweep_trial(["fit", "--lr=1e-5", "--learning_rate=3e-5"], {})
    with pytest.raises(SweepParamError, match="fp16 and bf16 both set trainer.precision"):
        sweep_trial(["fit", "--fp16=True", "--bf16=True"], {})


# ------------------------------------------------------------------------------------------- CLI keys
# Every alias target's value type, as the CLI parser gives it (the model's from the model classes). The two
# `last_checkpoint`/`divergence` ints were missing from the hand-kept tables this replaced.
ALIAS_TARGET_KINDS = {
    "model.learning_rate": "float", "data.batch_size": "int", "data.eval_batch_size": "int",
    "data.encoder_max_len": "int", "data.decoder_max_len": "int", "data.max_tokens": "int", "data.batching": "str",
    "model.weight_decay": "float", "model.warmup_ratio": "float", "trainer.max_epochs": "int",
    "trainer.max_steps": "int", "model.lr_scheduler": "str", "model.num_cycles": "int",
    "trainer.accumulate_grad_batches": "int", "trainer.gradient_clip_val": "float", "model.label_smoothing": "float",
    "early_stopping.patience": "int", "early_stopping.min_delta": "float", "model.optimizer": "str",
    "model.generation.num_beams": "int", "model.generation.no_repeat_ngram_size": "int",
    "model.generation.length_penalty": "float", "model.generation.max_new_tokens": "int",
    "model.generation.min_new_tokens": "int", "model.generation.do_sample": "bool",
    "model.generation.temperature": "float", "model.generation.top_p": "float", "seed_everything": "int",
    "trainer.precision": "other", "model.pretrained": "str", "model.lora.r": "int", "model.lora.alpha": "int",
    "model.lora.dropout": "float", "model.lora.use_dora": "bool", "model.lora.use_rslora": "bool",
    "model.lora.init": "str", "model.lora.plus_lr_ratio": "float", "model.neftune_alpha": "float",
    "model.packing": "bool", "data.prompt_template": "str", "divergence.max_nonfinite_steps": "int",
    "last_checkpoint.every_n_train_steps": "int",
}


def test_every_alias_target_has_the_type_the_parser_gives_it() -> None:
    assert {alias.key: M.key_kind(alias.key) for alias in M.ALIASES.values()} == ALIAS_TARGET_KINDS


@pytest.mark.parametrize("key", sorted(k for k, kind in ALIAS_TARGET_KINDS.items()
                                       if kind == "int" and not k.startswith("model.lora.")))
def test_int_alias_targets_refuse_a_fraction_when_the_cli_parses_them(key: str) -> None:
    """The parser itself agrees: a fraction for an ``int`` key fails to parse (the LoRA keys need an LLM config)."""
    with pytest.raises(SystemExit):
        resolved(["--config", QUICK, f"--{key}=1.5"])


def test_types_walk_into_dataclasses_and_unknown_keys_are_other() -> None:
    assert M.key_kind("model.generation.early_stopping") == "bool"
    assert M.key_kind("trainer.enable_progress_bar") == "other"  # bool | None: null is a value
    assert M.key_kind("model.lora.target_modules") == "other"  # str | list[str]
    assert M.key_kind("trainer.limit_val_batches") == "other"  # an int counts batches, a float is a fraction
    assert M.key_kind("model.lora.nope") == M.key_kind("data.nope") == M.key_kind("model_preset") == "other"


def test_roots_and_native_options_come_from_the_parser() -> None:
    assert M.ROOTS[:3] == ("model", "data", "trainer")
    assert set(M.ROOTS) == {"model", "data", "trainer", "checkpoint", "last_checkpoint", "early_stopping",
                            "divergence", "outputs", "submission"}
    assert {"config", "c", "ckpt_path", "seed_everything", "print_config", "h", "help", *M.ROOTS} <= M.NATIVE_OPTIONS
    # `fit --weights_only` is LightningCLI's own option (the hand-kept list missed it).
    assert split_argv(["fit", "--weights_only=true"]) == (["fit", "--weights_only=true"], {})


def test_importing_the_sweep_layer_builds_no_parser() -> None:
    code = ("import sys; import dsum.sweep.spec as S; from dsum.sweep import mapping as M; "
            "assert 'dsum.cli' not in sys.modules; assert M.fit_parser.cache_info().currsize == 0")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------- presets
def test_preset_config_goes_right_after_the_base_config_so_later_overrides_win() -> None:
    trial = sweep_trial(["fit", "--config", KOBART, "--trainer.max_epochs=3", "--model_preset=pko-t5-base",
                         "--lr=1e-05"], {})
    assert trial.cli_args == [
        "fit", "--config", KOBART,
        f"--config={REPO / 'configs/pko-t5.yaml'}" if not Path("configs/pko-t5.yaml").is_file()
        else "--config=configs/pko-t5.yaml", "--model.pretrained=paust/pko-t5-base",
        "--trainer.max_epochs=3",
        "--model.learning_rate=1e-05",
    ]


def test_a_preset_plus_an_override_resolves_in_the_documented_order() -> None:
    # base config < preset config < preset checkpoint < the command's own overrides < sweep parameters.
    config = resolved(["--config", QUICK, "--model_preset=pko-t5-base", "--data.batch_size=4",
                       "--trainer.max_epochs=3", "--epochs=5"])
    assert get(config, "model.pretrained") == "paust/pko-t5-base"  # the preset's checkpoint over its config's
    assert get(config, "model.optimizer") == "adafactor"            # from pko-t5.yaml, over quickstart's default
    assert get(config, "data.source_prefix") == "summarize: "       # from pko-t5.yaml
    assert get(config, "data.batch_size") == 4                      # the command's own override over the preset
    assert get(config, "trainer.max_epochs") == 5                   # the sweep parameter over the command


def test_preset_without_base_config_goes_right_after_the_subcommand() -> None:
    trial = sweep_trial(["fit", "--model_preset", "kobart-summary-v3", "--trainer.max_epochs", "1"], {})
    assert trial.cli_args == ["fit", "--config=configs/kobart.yaml", "--model.pretrained=EbanLee/kobart-summary-v3",
                              "--trainer.max_epochs", "1"]


def test_preset_config_resolves_against_the_repo_root_from_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sweep_trial(["fit", "--model_preset=kogpt2"], {}).cli_args == ["fit", f"--config={REPO / 'configs/kogpt2.yaml'}"]


def test_unknown_or_missing_preset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SweepParamError, match=r"model_preset='bart-large' is not one of: kobart, "):
        sweep_trial(["fit", "--model_preset=bart-large"], {})
    monkeypatch.setitem(M.PRESETS, "ghost", ("configs/does-not-exist.yaml", {}))
    with pytest.raises(SweepParamError, match="needs configs/does-not-exist.yaml"):
        sweep_trial(["fit", "--model_preset=ghost"], {})


def test_preset_settings_feed_the_constraints() -> None:
    # kogpt2.yaml: encoder_max_len 768 -> a swept batch of 32 is capped at 16 (encoder > 512), effective 32 kept.
    config = resolved(["--config", QUICK, "--model_preset=kogpt2", "--train_batch_size=32"])
    assert (get(config, "data.batch_size"), get(config, "trainer.accumulate_grad_batches")) == (16, 2)


# ------------------------------------------------------------------------------------------- derived
@pytest.mark.parametrize(("effective", "batch", "world", "accumulation"),
                         [(64, 16, 1, 4), (64, 16, 2, 2), (64, 8, 2, 4), (8, 32, 1, 1), (100, 32, 1, 3)])
def test_effective_batch_size_under_one_and_two_devices(effective: int, batch: int, world: int, accumulation: int) -> None:
    trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=batch), world_size=world, accumulate_grad_batches=1)
    EffectiveBatchSize(effective).setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert trainer.accumulate_grad_batches == accumulation


def test_effective_batch_size_reaches_the_trainer() -> None:
    trial = sweep_trial(["fit", "--config", QUICK, "--effective_batch_size=64.0"], {})
    assert [type(c) for c in trial.callbacks()] == [EffectiveBatchSize] and trial.callbacks()[0].effective == 64
    with pytest.raises(SweepParamError, match="effective_batch_size and gradient_accumulation_steps"):
        sweep_trial(["fit", "--effective_batch_size=64", "--gradient_accumulation_steps=2"], {})
    with pytest.raises(SweepParamError, match="must be positive"):
        sweep_trial(["fit", "--effective_batch_size=0"], {}).callbacks()


def test_learning_rate_scale_multiplies_each_presets_own_rate() -> None:
    # As model_comparison.yaml runs it: each family at a multiple of its own configured learning rate.
    t5 = resolved(["--model_preset=pko-t5-small", "--learning_rate_scale=0.5"])
    bart = resolved(["--model_preset=kobart", "--learning_rate_scale=2.0"])
    assert get(t5, "model.learning_rate") == pytest.approx(0.5 * 1e-3)  # pko-t5.yaml: Adafactor at 1e-3
    assert get(t5, "model.optimizer") == "adafactor"
    assert get(bart, "model.learning_rate") == pytest.approx(2 * 1e-5)  # kobart.yaml keeps the signature's 1e-5


# ------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize(("raw", "value"), [
    ("64.0", 64), ("-3.0", -3), ("1e-05", 1e-05), ("0.5", 0.5), ("None", None), ("True", True), ("False", False),
    ("[1, 2]", [1, 2]), ("[64.0, None, True]", [64, None, True]), ("['<usr>', '</s>']", ["<usr>", "</s>"]),
    ("(1, 2)", [1, 2]), ("{'a': 1.0}", {"a": 1}), ("a; rm -rf / && echo $(id) | tee `x` > y", "a; rm -rf / && echo $(id) | tee `x` > y"),
    ("[not python", "[not python"), ("summarize: ", "summarize: "), ("", ""),
])
def test_wandb_value_formats_are_read_back(raw: str, value: object) -> None:
    assert M.read_value(raw) == value


def test_agent_style_values_reach_typed_options() -> None:
    config = resolved(["--config", QUICK, "--train_batch_size=64.0", "--early_stopping_patience=None", "--do_sample=True",
                       "--model.remove_tokens=['<usr>', '</s>']", "--data.eval_batch_size=16.0",
                       "--data.source_prefix=a;b $(c) | d"])
    assert get(config, "data.batch_size") == 64 and get(config, "data.eval_batch_size") == 16
    assert get(config, "early_stopping.patience") is None
    assert get(config, "model.generation.do_sample") is True
    assert get(config, "model.remove_tokens") == ["<usr>", "</s>"]
    assert get(config, "data.source_prefix") == "a;b $(c) | d"


def test_fraction_keys_keep_their_floats(tmp_path: Path) -> None:
    # Lightning: limit_train_batches=1.0 is all batches, =1 is one batch.
    natives, _ = split_argv(["fit", "--trainer.limit_train_batches=1.0", "--trainer.max_epochs=2.0"])
    assert natives == ["fit", "--trainer.limit_train_batches=1.0", "--trainer.max_epochs=2"]
    path = write_param_file(tmp_path / "p.yaml", {"trainer.limit_val_batches": 1.0, "lr": 1e-5})
    assert "--trainer.limit_val_batches=1.0" in sweep_trial(["fit"], {"WANDB_SWEEP_PARAM_PATH": str(path)}).cli_args


def test_space_separated_and_bare_boolean_forms() -> None:
    _, params = split_argv(["fit", "--lr", "1e-05", "--do_sample", "--num_beams", "4", "--seed", "-1"])
    assert params == {"lr": 1e-05, "do_sample": True, "num_beams": 4, "seed": -1}


def test_native_arguments_pass_through_in_order() -> None:
    argv = ["fit", "-c", "a.yaml", "--config=b.yaml", "--print_config=skip_null", "--ckpt_path", "last.ckpt",
            "--seed_everything", "7", "--model=dsum.models.CausalLMSummarizer", "--trainer.max_epochs", "3",
            "--data.batch_size=8", "--checkpoint.save_top_k=2", "--early_stopping.patience=5",
            "--outputs.export_best=false", "--submission.path=s.csv", "--trainer.callbacks+=X", "-h", "--help"]
    assert sweep_trial(argv, {}).cli_args == argv


# ------------------------------------------------------------------------------------------- errors
def test_unknown_name_is_refused_with_the_valid_names() -> None:
    with pytest.raises(SweepParamError) as err:
        sweep_trial(["fit", "--config", KOBART, "--learnig_rate=1e-5"], {})
    message = str(err.value)
    assert "unknown sweep parameter 'learnig_rate'" in message and "Did you mean learning_rate" in message
    for name in ("train_batch_size", "model_preset", "effective_batch_size", "kobart-base-v2", "data."):
        assert name in message
    with pytest.raises(SweepParamError, match="dotted keys must start with one of model., data."):
        sweep_trial(["fit", "--optimizer.lr=1"], {})
    with pytest.raises(SweepParamError, match="has no value"):
        sweep_trial(["fit", "--lr"], {})


def test_unknown_name_in_the_param_file_is_refused(tmp_path: Path) -> None:
    path = write_param_file(tmp_path / "p.yaml", {"lr": 1e-5, "dropout": 0.1})
    with pytest.raises(SweepParamError, match=r"unknown sweep parameter 'dropout' \(from WANDB_SWEEP_PARAM_PATH"):
        sweep_trial(["fit"], {"WANDB_SWEEP_PARAM_PATH": str(path)})


# ------------------------------------------------------------------------------------------- constraints
@pytest.mark.parametrize(
    ("encoder", "batch", "accumulation", "new_batch", "new_accumulation"),
    [
        (512, 64, 1, 64, 1),  # at the threshold: untouched
        (1024, 32, 1, 16, 2),  # > 512: cap 16, effective 32 kept
        (1024, 50, 1, 16, 3),
        (1024, 8, 1, 8, 1),
        (2048, 64, 1, 8, 8),  # > 1024: cap 8
        (2048, 32, 2, 8, 8),
        (2048, 4, 1, 4, 2),  # > 1024: accumulation >= 2 even without a cap
    ],
)
def test_length_constraints_cap_the_batch_and_keep_the_effective_batch(
        encoder: int, batch: int, accumulation: int, new_batch: int, new_accumulation: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    config = resolved(["--config", QUICK, f"--data.batch_size={batch}", f"--trainer.accumulate_grad_batches={accumulation}",
                       f"--encoder_max_len={encoder}"])
    assert (get(config, "data.batch_size"), get(config, "trainer.accumulate_grad_batches")) == (new_batch, new_accumulation)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dsum.sweep:")]
    assert len(notes) == (0 if (new_batch, new_accumulation) == (batch, accumulation) else 1)


@pytest.mark.parametrize(("budget", "expected"), [(1000, 1152), (8192, 8192), (None, 64 * 1152)])
def test_token_budget_raises_max_tokens_instead_of_capping(budget: int | None, expected: int, tmp_path: Path) -> None:
    config_file = tmp_path / "budget.yaml"
    config_file.write_text(f"data:\n  batch_size: 64\n  max_tokens: {'null' if budget is None else budget}\n"
                           "  batching: token_budget\n")
    config = resolved(["--config", QUICK, "--config", str(config_file), "--encoder_max_len=1024", "--decoder_max_len=128"])
    assert get(config, "data.max_tokens") == expected
    assert (get(config, "data.batch_size"), get(config, "trainer.accumulate_grad_batches")) == (64, 1)


def test_plain_runs_are_left_alone() -> None:
    argv = ["fit", "--config", KOBART, "--data.encoder_max_len=2048"]
    env: dict[str, str] = {}
    assert sweep_trial(argv, env).cli_args == argv
    assert get(resolved(argv[1:]), "data.batch_size") == 50
    assert SWEEP_PARAMS_ENV not in env


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


def test_param_file_path_gives_the_same_config_as_args(tmp_path: Path) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    path = write_param_file(tmp_path / "config-run1.yaml", AGENT_PARAMS)
    base = ["--config", KOBART, "--trainer.devices=1"]
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in AGENT_PARAMS.items()}})["args"]
    env_args: dict[str, str] = {"WANDB_SWEEP_PARAM_PATH": str(path)}
    env_file: dict[str, str] = {"WANDB_SWEEP_PARAM_PATH": str(path)}
    with_args, from_file, without_file = resolved(base + args, env_args), resolved(base, env_file), resolved(base + args, {})
    assert with_args == from_file == without_file
    assert json.loads(env_args[SWEEP_PARAMS_ENV]) == json.loads(env_file[SWEEP_PARAMS_ENV]) == {
        "learning_rate": 3.2e-05, "train_batch_size": 32, "encoder_max_len": 1024, "fp16": True,
        "early_stopping_patience": None, "optim": "adamw_torch", "model.remove_tokens": ["<usr>"],
        "model.generation.length_penalty": 1, "effective_batch_size": 64,
    }
    assert (get(with_args, "data.batch_size"), get(with_args, "trainer.accumulate_grad_batches")) == (16, 2)
    assert get(with_args, "trainer.precision") == "16-mixed" and get(with_args, "model.optimizer") == "adamw"


def test_argv_wins_over_the_param_file(tmp_path: Path) -> None:
    path = write_param_file(tmp_path / "p.yaml", {"lr": 1e-4, "num_beams": 8})
    config = resolved(["--config", QUICK, "--lr=1e-05"], {"WANDB_SWEEP_PARAM_PATH": str(path)})
    assert (get(config, "model.learning_rate"), get(config, "model.generation.num_beams")) == (1e-05, 8)


def test_missing_param_file_without_argv_params_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SweepParamError, match="WANDB_SWEEP_PARAM_PATH=.* does not exist"):
        sweep_trial(["fit"], {"WANDB_SWEEP_PARAM_PATH": str(tmp_path / "nope.yaml")})
    assert sweep_trial(["fit", "--lr=1e-05"], {"WANDB_SWEEP_PARAM_PATH": str(tmp_path / "nope.yaml")}).params


def test_each_trial_gets_its_own_run_dir() -> None:
    env = {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run7"}
    assert sweep_trial(["fit", "--lr=1e-05"], env).cli_args[-1] == "--trainer.default_root_dir=outputs/sweeps/sw1/runs/run7"
    assert sweep_trial(["fit"], {**env, "DSUM_SWEEP_DIR": "/data/sw"}).cli_args[-1] == \
        "--trainer.default_root_dir=/data/sw/runs/run7"
    explicit = sweep_trial(["fit", "--trainer.default_root_dir", "mine", "--lr=1e-05"], dict(env)).cli_args
    assert not any(a.startswith("--trainer.default_root_dir=") for a in explicit)
    assert not any("default_root_dir" in a for a in sweep_trial(["fit", "--lr=1e-05"], {}).cli_args)


def test_sweep_params_env_is_redacted(tmp_path: Path) -> None:
    secret = "sekrit-abcdef-123"
    swept = {"model.pretrained": secret, "model.hf_token": "xyz123456", "lr": 1e-05}
    env = {"WANDB_API_KEY": secret, "WANDB_SWEEP_PARAM_PATH": str(write_param_file(tmp_path / "p.yaml", swept))}
    trial = sweep_trial(["fit"], env)
    assert f"--model.pretrained={secret}" in trial.cli_args  # the run itself gets the real value
    assert json.loads(env[SWEEP_PARAMS_ENV]) == {"model.pretrained": REDACTED, "model.hf_token": REDACTED, "lr": 1e-05}


def test_rules_log_on_rank_zero_only(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--config", QUICK, "--encoder_max_len=2048"]
    first = resolved(argv)
    assert "dsum.sweep: data.encoder_max_len=2048 > 1024" in capsys.readouterr().err
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what Lightning reads from RANK/LOCAL_RANK/SLURM_PROCID
    assert resolved(argv) == first
    assert "dsum.sweep:" not in capsys.readouterr().err


def test_model_comparison_runs_each_family_at_its_own_learning_rate() -> None:
    from dsum.sweep.spec import load_sweep

    spec = load_sweep(REPO / "sweeps" / "model_comparison.yaml")["parameters"]
    assert "learning_rate" not in spec and "lr" not in spec  # an absolute rate would override every preset's own
    scale = max(spec["learning_rate_scale"]["values"])
    for preset in spec["model_preset"]["values"]:
        config_file, _ = M.PRESETS[preset]
        own = get(resolved(["--config", config_file]), "model.learning_rate")
        swept = resolved([f"--model_preset={preset}", f"--learning_rate_scale={scale}"])
        assert get(swept, "model.learning_rate") == pytest.approx(scale * own), preset
