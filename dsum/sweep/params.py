"""Sweep parameters -> LightningCLI overrides, before LightningCLI parses anything.

A ``wandb agent`` runs ``python main.py fit --config configs/kobart.yaml --lr=1e-05 --train_batch_size=16.0``:
it expands ``${args}`` as ``--name=value`` with Python ``str()`` values (``True``, ``None``, ``[1, 2]``,
``64.0``) and also writes the run's parameters to ``$WANDB_SWEEP_PARAM_PATH`` (``{name: {value: v}}``).
LightningCLI would refuse most of that: ``64.0`` for an int, ``None`` for a float, and ``--lr`` as an
"ambiguous option" (a prefix of other options). :func:`rewrite_argv` turns it into what LightningCLI
accepts:

- the original project's parameter names (:data:`ALIASES`) become dotted keys, with value maps
  (``optim: adamw_torch`` -> ``--model.optimizer=adamw``, ``fp16: True`` -> ``--trainer.precision=16-mixed``);
- ``model_preset: <name>`` (:data:`PRESETS`) adds that family's config file (and checkpoint) right after
  the base ``--config``, so later overrides still win;
- ``effective_batch_size`` derives ``trainer.accumulate_grad_batches`` from the batch size and world size;
- the original sweep's length constraints (long encoder inputs cap the batch size) are enforced here,
  because its ``constraints:`` key is not valid W&B sweep schema;
- values are coerced (``64.0`` -> ``64``, ``None`` -> ``null``, ``True`` -> ``true``, ``[1, 2]`` -> JSON);
- unknown names stop the run before anything trains, with the list of valid names;
- in a sweep, each trial gets its own run directory.

Native arguments (subcommand, ``--config``, dotted keys, ...) pass through in order.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsum.secrets import redact, secret_values

__all__ = [
    "ALIASES",
    "DERIVED",
    "PRESETS",
    "PRESET_PARAM",
    "Alias",
    "ParsedArgv",
    "Preset",
    "SweepParamError",
    "cli_value",
    "coerce_cli_string",
    "is_valid_name",
    "load_config_files",
    "map_params",
    "map_value",
    "parse_argv",
    "parse_cli_value",
    "read_param_file",
    "rewrite_argv",
    "target_key",
    "valid_names",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_PREFIX = "dsum.sweep:"
SWEEP_PARAMS_ENV = "DSUM_SWEEP_PARAMS"
SWEEP_DIR_ENV = "DSUM_SWEEP_DIR"

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Roots of the dotted keys LightningCLI accepts (`python main.py fit --help`).
NATIVE_ROOTS = ("model", "data", "trainer", "checkpoint", "early_stopping", "outputs", "submission")
# Native options that take a value, and those that never take a separate one.
NATIVE_VALUED = frozenset(
    {"--config", "-c", "--ckpt_path", "--seed_everything", "--verbose", "--return_predictions"}
    | {f"--{root}" for root in NATIVE_ROOTS}
)
NATIVE_FLAGS = frozenset({"--print_config", "-h", "--help"})
# Native top-level keys that a sweep may also name as parameters.
NATIVE_PARAM_KEYS = ("seed_everything", "ckpt_path")


class SweepParamError(ValueError):
    """A sweep parameter that maps to no CLI key, or a value it cannot take."""


# ------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Alias:
    """A sweep parameter name for one CLI key.

    Args:
        key: Dotted LightningCLI key (``model.`` keys without ``init_args``).
        values: Value map (sweep value -> CLI value); when set, other values are refused.
    """

    key: str
    values: Mapping[Any, Any] | None = None


OPTIMIZERS = {"adamw": "adamw", "adamw_torch": "adamw", "adamw_hf": "adamw", "adamw_torch_fused": "adamw",
              "adafactor": "adafactor"}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "cosine_with_restarts": "cosine_with_restarts",
              # dsum's `constant` already warms up for `warmup_ratio` of the steps.
              "constant": "constant", "constant_with_warmup": "constant"}
BATCHING = {name: name for name in ("length_grouped", "token_budget", "random")}
FP16 = {True: "16-mixed", False: "32-true"}
BF16 = {True: "bf16-mixed", False: "32-true"}


def _aliases(*groups: tuple[tuple[str, ...], str, Mapping[Any, Any] | None]) -> dict[str, Alias]:
    table: dict[str, Alias] = {}
    for names, key, values in groups:
        for name in names:
            table[name] = Alias(key, values)
    return table


# The one alias table: the original sweep spaces' names (HF Seq2SeqTrainer style) and a few common synonyms.
ALIASES: dict[str, Alias] = _aliases(
    (("lr", "learning_rate"), "model.learning_rate", None),
    (("train_batch_size", "per_device_train_batch_size", "batch_size"), "data.batch_size", None),
    (("eval_batch_size", "per_device_eval_batch_size"), "data.eval_batch_size", None),
    (("encoder_max_len", "max_source_length"), "data.encoder_max_len", None),
    (("decoder_max_len", "max_target_length"), "data.decoder_max_len", None),
    (("max_tokens",), "data.max_tokens", None),
    (("batching",), "data.batching", BATCHING),
    (("weight_decay",), "model.weight_decay", None),
    (("warmup_ratio",), "model.warmup_ratio", None),
    (("num_train_epochs", "epochs", "max_epochs"), "trainer.max_epochs", None),
    (("max_steps",), "trainer.max_steps", None),
    (("lr_scheduler_type", "scheduler"), "model.lr_scheduler", SCHEDULERS),
    (("num_cycles",), "model.num_cycles", None),
    (("gradient_accumulation_steps", "accumulate_grad_batches"), "trainer.accumulate_grad_batches", None),
    (("max_grad_norm", "gradient_clip_val"), "trainer.gradient_clip_val", None),
    (("label_smoothing", "label_smoothing_factor"), "model.label_smoothing", None),
    (("early_stopping_patience",), "early_stopping.patience", None),
    (("early_stopping_threshold",), "early_stopping.min_delta", None),
    (("optim", "optimizer"), "model.optimizer", OPTIMIZERS),
    (("num_beams",), "model.generation.num_beams", None),
    (("no_repeat_ngram_size",), "model.generation.no_repeat_ngram_size", None),
    (("length_penalty",), "model.generation.length_penalty", None),
    (("generation_max_length", "max_new_tokens"), "model.generation.max_new_tokens", None),
    (("min_new_tokens",), "model.generation.min_new_tokens", None),
    (("do_sample",), "model.generation.do_sample", None),
    (("temperature",), "model.generation.temperature", None),
    (("top_p",), "model.generation.top_p", None),
    (("seed",), "seed_everything", None),
    (("fp16",), "trainer.precision", FP16),
    (("bf16",), "trainer.precision", BF16),
    (("precision",), "trainer.precision", None),
    (("pretrained", "model_name_or_path"), "model.pretrained", None),
)


@dataclass(frozen=True)
class Preset:
    """A model family's config file plus the overrides that pick one of its checkpoints.

    Args:
        config: Config path, resolved against the current directory, then the repository root.
        overrides: Dotted keys applied right after the config.
    """

    config: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


PRESET_PARAM = "model_preset"
# Each family with its own checkpoints and settings (the original crossed architecture x checkpoint).
PRESETS: dict[str, Preset] = {
    "kobart": Preset("configs/kobart.yaml"),
    "kobart-base-v2": Preset("configs/kobart.yaml", {"model.pretrained": "gogamza/kobart-base-v2"}),
    "kobart-summary-v3": Preset("configs/kobart.yaml", {"model.pretrained": "EbanLee/kobart-summary-v3"}),
    "kogpt2": Preset("configs/kogpt2.yaml"),
    "pko-t5-small": Preset("configs/pko-t5.yaml"),
    "pko-t5-base": Preset("configs/pko-t5.yaml", {"model.pretrained": "paust/pko-t5-base"}),
    "mt5-small": Preset("configs/mt5.yaml"),
    "mt5-base": Preset("configs/mt5.yaml", {"model.pretrained": "google/mt5-base"}),
    "tiny-bart": Preset("configs/quickstart.yaml"),
    "tiny-t5": Preset("configs/quickstart-t5.yaml"),
    "tiny-gpt2": Preset("configs/quickstart-gpt2.yaml"),
}

EFFECTIVE_BATCH = "effective_batch_size"
DERIVED: dict[str, str] = {
    EFFECTIVE_BATCH: "sets trainer.accumulate_grad_batches = max(1, round(effective / (batch_size x world_size)))",
}

# The original sweep's `constraints:`: encoder inputs longer than `above` tokens cap the train batch at
# `max_batch` and need at least `min_accumulation` accumulation steps (most restrictive first).
LENGTH_CAPS: tuple[tuple[int, int, int], ...] = ((1024, 8, 2), (512, 16, 1))

# Values the code uses when neither a config nor an override sets them (tests check these against
# DialogueDataModule and Trainer, so they cannot drift).
DEFAULTS: dict[str, Any] = {
    "data.batch_size": 16,
    "data.batching": "length_grouped",
    "data.max_tokens": None,
    "data.encoder_max_len": 512,
    "data.decoder_max_len": 100,
    "trainer.accumulate_grad_batches": 1,
    "trainer.devices": "auto",
    "trainer.num_nodes": 1,
    "trainer.accelerator": "auto",
}

# Value types of the keys sweeps commonly set; the spec checker uses them to catch distributions that
# cannot produce a valid value (a float for an int key, ...).
INT_KEYS = frozenset({
    "data.batch_size", "data.eval_batch_size", "data.encoder_max_len", "data.decoder_max_len", "data.max_tokens",
    "data.val_subset", "data.num_workers", "data.seed", "trainer.max_epochs", "trainer.max_steps",
    "trainer.accumulate_grad_batches", "trainer.num_nodes", "early_stopping.patience", "model.num_cycles",
    "model.generation.num_beams", "model.generation.no_repeat_ngram_size", "model.generation.max_new_tokens",
    "model.generation.min_new_tokens", "seed_everything", EFFECTIVE_BATCH,
})
FLOAT_KEYS = frozenset({
    "model.learning_rate", "model.weight_decay", "model.warmup_ratio", "model.label_smoothing",
    "model.generation.length_penalty", "model.generation.top_p", "model.generation.temperature",
    "early_stopping.min_delta", "trainer.gradient_clip_val",
})
BOOL_KEYS = frozenset({"model.generation.do_sample", "model.generation.early_stopping", "fp16", "bf16"})
# Lightning reads an int as a count and a float as a fraction for these: `1.0` (all batches, once per
# epoch) must not become `1` (one batch).
FRACTION_KEYS = frozenset({
    "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
    "trainer.limit_predict_batches", "trainer.val_check_interval", "trainer.overfit_batches",
})


# ------------------------------------------------------------------------------------------- names
def valid_names() -> list[str]:
    """Every non-dotted sweep parameter name: aliases, ``model_preset`` and derived values."""
    return sorted([*ALIASES, PRESET_PARAM, *DERIVED, *NATIVE_PARAM_KEYS])


def _is_dotted_key(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[0] in NATIVE_ROOTS and all(p.isidentifier() for p in parts)


def normalize_key(key: str) -> str:
    """``model.init_args.x`` -> ``model.x`` (the dotted shorthand LightningCLI also accepts)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] in ("model", "data") and parts[1] == "init_args":
        parts = [parts[0], *parts[2:]]
    return ".".join(parts)


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is an alias, ``model_preset``, a derived value or a dotted key with a known root."""
    return name in ALIASES or name in DERIVED or name == PRESET_PARAM or name in NATIVE_PARAM_KEYS \
        or _is_dotted_key(name)


def target_key(name: str) -> str | None:
    """The dotted CLI key a parameter sets (None for ``model_preset`` and derived values).

    Raises:
        SweepParamError: ``name`` is not a valid sweep parameter.
    """
    if name in ALIASES:
        return ALIASES[name].key
    if name == PRESET_PARAM or name in DERIVED:
        return None
    if name in NATIVE_PARAM_KEYS or _is_dotted_key(name):
        return normalize_key(name)
    raise SweepParamError(unknown_name_message(name))


def unknown_name_message(name: str, source: str = "") -> str:
    """A readable refusal listing every valid name (and the closest ones)."""
    close = difflib.get_close_matches(name, [*valid_names(), *PRESETS], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    origin = f" (from {source})" if source else ""
    return (
        f"unknown sweep parameter {name!r}{origin}.{hint}\n"
        f"  aliases: {', '.join(sorted(ALIASES))}\n"
        f"  preset: {PRESET_PARAM} (one of {', '.join(PRESETS)})\n"
        f"  derived: {', '.join(DERIVED)}\n"
        f"  native: {', '.join(NATIVE_PARAM_KEYS)}, or any dotted key under "
        f"{', '.join(r + '.' for r in NATIVE_ROOTS)} (see `python main.py fit --help`)"
    )


# ------------------------------------------------------------------------------------------- values
_INTEGRAL_FLOAT = re.compile(r"^[+-]?\d+\.0*$")


def _normalize(value: Any) -> Any:
    """Integral floats -> ints, tuples -> lists, recursively (JSON-ready)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value


def keeps_floats(name: str) -> bool:
    """Whether ``1.0`` and ``1`` mean different things for this key (count vs fraction)."""
    return normalize_key(name) in FRACTION_KEYS


def coerce_cli_string(text: str, keep_floats: bool = False) -> str:
    """A ``str()``-formatted value as LightningCLI accepts it: ``64.0`` -> ``64``, ``None`` -> ``null``,
    ``True`` -> ``true``, ``[1, 2]`` -> JSON. Anything else (shell metacharacters included) is kept
    verbatim: no shell ever sees these strings.

    Args:
        text: The value as given.
        keep_floats: Keep ``1.0`` as is (for keys where a float is a fraction and an int a count).
    """
    if text in ("True", "False"):
        return text.lower()
    if text == "None":
        return "null"
    if _INTEGRAL_FLOAT.match(text) and not keep_floats:
        return str(int(float(text)))
    if text and text[0] in "[({":
        try:
            literal = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text
        if isinstance(literal, (list, tuple, dict)):
            return json.dumps(_normalize(literal), ensure_ascii=False)
    return text


def cli_value(value: Any, keep_floats: bool = False) -> str:
    """A typed value (from a YAML/JSON parameter file or a sampler) as a CLI string.

    Args:
        value: The value.
        keep_floats: Keep ``1.0`` as a float (see :func:`coerce_cli_string`).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if keep_floats or not (math.isfinite(value) and value.is_integer()):
            return repr(value)
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_normalize(value), ensure_ascii=False)
    return coerce_cli_string(str(value), keep_floats)


def parse_cli_value(text: str) -> Any:
    """A CLI string back to a typed value (JSON where it parses, else the string)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def map_value(name: str, value: Any) -> tuple[str, Any]:
    """The CLI key and value for one parameter, through the alias's value map.

    Raises:
        SweepParamError: unknown name, or a value outside the alias's value map.
    """
    key = target_key(name)
    if key is None:
        raise SweepParamError(f"{name} is not a plain key parameter (it is a preset or derived value)")
    alias = ALIASES.get(name)
    if alias is not None and alias.values is not None:
        try:
            return key, alias.values[value]
        except (KeyError, TypeError):
            choices = ", ".join(str(v) for v in alias.values)
            raise SweepParamError(f"{name}={value!r} is not one of: {choices}") from None
    return key, value


# ------------------------------------------------------------------------------------------- configs
def resolve_config_path(path: str) -> Path | None:
    """``path`` as given when it exists from the current directory, else under the repository root."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (REPO_ROOT / candidate).is_file():
        return REPO_ROOT / candidate
    return None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{normalized.dotted.key: value}`` (``class_path`` kept, ``init_args`` dropped)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[normalize_key(dotted)] = value
    return {normalize_key(k): v for k, v in flat.items()}


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepParamError(f"cannot read {what} {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SweepParamError(f"{what} {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def load_config_files(paths: Sequence[str]) -> dict[str, Any]:
    """The flat merge of ``--config`` YAMLs, later files overriding earlier ones.

    Paths that do not exist are skipped (LightningCLI reports them itself); inline YAML mappings given
    to ``--config`` are read as such.
    """
    merged: dict[str, Any] = {}
    for entry in paths:
        path = resolve_config_path(entry)
        if path is not None:
            merged.update(flatten(_read_yaml(path, "config")))
            continue
        try:
            inline = yaml.safe_load(entry)
        except yaml.YAMLError:
            continue
        if isinstance(inline, dict):
            merged.update(flatten(inline))
    return merged


# ------------------------------------------------------------------------------------------- argv
@dataclass
class ArgItem:
    """One native argument: its tokens as given and, for options, its name and value."""

    tokens: list[str]
    name: str | None = None
    value: str | None = None


@dataclass
class ParsedArgv:
    """A command line split into native arguments (in order) and sweep parameters (name -> string)."""

    natives: list[ArgItem] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)

    def configs(self) -> list[str]:
        return [item.value for item in self.natives if item.name in ("--config", "-c") and item.value]

    def dotted(self) -> dict[str, str]:
        """Dotted (and ``--model=`` style) native overrides, by normalized key; the last one wins."""
        out: dict[str, str] = {}
        for item in self.natives:
            if item.name is None or item.value is None:
                continue
            bare = item.name.lstrip("-")
            if _is_dotted_key(bare.rstrip("+")) or bare == "seed_everything":
                out[normalize_key(bare)] = item.value
            elif bare in ("model", "data") and "." in item.value and "/" not in item.value:
                out[f"{bare}.class_path"] = item.value
        return out


def _value_option(bare: str) -> bool:
    return f"--{bare}" in NATIVE_VALUED or _is_dotted_key(bare.rstrip("+"))


def _takes_next(tokens: Sequence[str], i: int, bool_param: bool = False) -> bool:
    """Whether the token after position ``i`` is this option's value (``--k v`` form)."""
    if i + 1 >= len(tokens):
        return False
    nxt = tokens[i + 1]
    if bool_param:
        return nxt in ("True", "False", "true", "false", "1", "0")
    return not nxt.startswith("--") or bool(re.match(r"^-\d", nxt))


def parse_argv(argv: Sequence[str], source: str = "the command line") -> ParsedArgv:
    """Split ``argv`` into native arguments and sweep parameters, coercing values.

    Both ``--k=v`` and ``--k v`` are accepted; a boolean sweep parameter may be a bare flag
    (``${args_no_boolean_flags}``).

    Raises:
        SweepParamError: an option that is neither native nor a valid sweep parameter.
    """
    parsed = ParsedArgv()
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-") or token == "-":
            parsed.natives.append(ArgItem([token]))
            i += 1
            continue
        name, eq, value = token.partition("=")
        if name in NATIVE_FLAGS:
            parsed.natives.append(ArgItem([token], name, value if eq else None))
            i += 1
            continue
        bare = name.lstrip("-")
        if name.startswith("--") and is_valid_name(bare) and not _value_option(bare):
            # A sweep parameter (alias, preset, derived).
            is_bool = ALIASES.get(bare, Alias("")).key in BOOL_KEYS or bare in BOOL_KEYS
            if not eq:
                if _takes_next(tokens, i, bool_param=is_bool):
                    value = tokens[i + 1]
                    i += 1
                elif is_bool:
                    value = "true"
                else:
                    raise SweepParamError(f"sweep parameter --{bare} (from {source}) has no value")
            if bare in parsed.params:
                raise SweepParamError(f"sweep parameter --{bare} is given twice (from {source})")
            parsed.params[bare] = coerce_cli_string(value)
            i += 1
            continue
        if name in NATIVE_VALUED or (name.startswith("--") and _value_option(bare)):
            coerce = name not in ("--config", "-c", "--ckpt_path") and bare not in NATIVE_ROOTS
            keep = keeps_floats(bare)
            if eq:
                value = coerce_cli_string(value, keep) if coerce else value
                parsed.natives.append(ArgItem([f"{name}={value}"], name, value))
                i += 1
            elif _takes_next(tokens, i):
                value = coerce_cli_string(tokens[i + 1], keep) if coerce else tokens[i + 1]
                parsed.natives.append(ArgItem([name, value], name, value))
                i += 2
            else:
                parsed.natives.append(ArgItem([token], name, None))
                i += 1
            continue
        if name.startswith("--") and "." in bare:
            raise SweepParamError(
                f"unknown option {name} (from {source}): dotted keys must start with one of "
                f"{', '.join(r + '.' for r in NATIVE_ROOTS)}"
            )
        raise SweepParamError(unknown_name_message(bare, source))
    return parsed


def read_param_file(path: str | Path) -> dict[str, Any]:
    """The run's parameters from a W&B agent's ``WANDB_SWEEP_PARAM_PATH`` file.

    The agent writes ``wandb_version: 1`` followed by ``{name: {value: v}}`` (wandb's
    ``config_util.save_config_file_from_dict``).
    """
    data = _read_yaml(Path(path), "sweep parameter file")
    data.pop("wandb_version", None)
    params: dict[str, Any] = {}
    for name, entry in data.items():
        if str(name).startswith("_"):
            continue
        params[str(name)] = entry["value"] if isinstance(entry, Mapping) and "value" in entry else entry
    return params


# ------------------------------------------------------------------------------------------- mapping
@dataclass
class _Plan:
    preset_args: list[str] = field(default_factory=list)
    overrides: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (flag name, CLI value)
    notes: list[str] = field(default_factory=list)

    def override_args(self) -> list[str]:
        return [f"--{flag}={value}" for flag, value in self.overrides.values()]


def _as_int(value: Any, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SweepParamError(f"{what} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise SweepParamError(f"{what} must be an integer, got {value!r}")
    return int(number)


def _device_count(devices: Any, accelerator: Any) -> int:
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str) and "," in devices:
        return max(1, len([d for d in devices.split(",") if d.strip()]))
    if devices in (None, "auto", -1, "-1"):
        if str(accelerator) == "cpu":
            return 1
        try:
            import torch  # only needed for `auto` devices; main.py has imported it already

            return max(1, torch.cuda.device_count())
        except ImportError:
            return 1
    return max(1, _as_int(devices, "trainer.devices"))


def world_size_of(effective: Mapping[str, Any]) -> int:
    """devices x num_nodes, as Lightning would resolve them (``auto``/-1: every visible CUDA device, else 1)."""
    devices = _device_count(effective.get("trainer.devices"), effective.get("trainer.accelerator"))
    return devices * max(1, _as_int(effective.get("trainer.num_nodes") or 1, "trainer.num_nodes"))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _plan(params: Mapping[str, str], base: Mapping[str, Any], fixed: Mapping[str, Any],
          world_size: int | None) -> _Plan:
    """The overrides for ``params`` (name -> CLI string) on top of ``base`` (flat) and ``fixed`` (flat)."""
    plan = _Plan()
    for name in params:
        if not is_valid_name(name):
            raise SweepParamError(unknown_name_message(name))
    effective: dict[str, Any] = {**DEFAULTS, **base}

    # Preset: a family's config (and checkpoint), applied before the command line's own overrides.
    if PRESET_PARAM in params:
        preset_name = parse_cli_value(params[PRESET_PARAM])
        preset = PRESETS.get(str(preset_name))
        if preset is None:
            raise SweepParamError(f"{PRESET_PARAM}={preset_name!r} is not one of: {', '.join(PRESETS)}")
        path = resolve_config_path(preset.config)
        if path is None:
            raise SweepParamError(
                f"{PRESET_PARAM}={preset_name} needs {preset.config}, found neither in {Path.cwd()} "
                f"nor in {REPO_ROOT}"
            )
        plan.preset_args.append(f"--config={path}")
        effective.update(flatten(_read_yaml(path, "config")))
        for key, value in preset.overrides.items():
            plan.preset_args.append(f"--{key}={cli_value(value)}")
            effective[normalize_key(key)] = value
    effective.update(fixed)

    # Plain keys, through the value maps.
    set_by: dict[str, str] = {}
    precision: dict[str, bool] = {}
    for name, text in params.items():
        if name == PRESET_PARAM or name in DERIVED:
            continue
        value = parse_cli_value(text)
        if name in ("fp16", "bf16"):
            if not isinstance(value, bool):
                raise SweepParamError(f"{name}={text!r} must be true or false")
            precision[name] = value
            continue
        key, mapped = map_value(name, value)
        if key in set_by:
            raise SweepParamError(f"{set_by[key]} and {name} both set {key}: sweep only one of them")
        set_by[key] = name
        flag = name if (_is_dotted_key(name) or name in NATIVE_PARAM_KEYS) else key
        out_text = text if mapped is value else cli_value(mapped)
        plan.overrides[key] = (flag, out_text)
        if isinstance(mapped, Mapping):
            effective.update(flatten(mapped, key + "."))
        else:
            effective[key] = mapped
    if precision:
        if "trainer.precision" in set_by:
            raise SweepParamError(f"{set_by['trainer.precision']} and fp16/bf16 both set trainer.precision")
        if precision.get("fp16") and precision.get("bf16"):
            raise SweepParamError("fp16 and bf16 are both true: choose one")
        chosen = "bf16" if precision.get("bf16") else "fp16"
        value = (BF16 if chosen == "bf16" else FP16)[precision.get(chosen, False)]
        plan.overrides["trainer.precision"] = ("trainer.precision", value)
        set_by["trainer.precision"] = chosen
        effective["trainer.precision"] = value

    batch = _as_int(effective["data.batch_size"], "data.batch_size")
    accumulation = _as_int(effective["trainer.accumulate_grad_batches"] or 1, "trainer.accumulate_grad_batches")

    def set_value(key: str, value: Any) -> None:
        plan.overrides[key] = (key, cli_value(value))
        effective[key] = value

    # Derived: accumulation from the effective batch.
    if EFFECTIVE_BATCH in params:
        if "trainer.accumulate_grad_batches" in set_by:
            raise SweepParamError(
                f"{EFFECTIVE_BATCH} and {set_by['trainer.accumulate_grad_batches']} both set "
                "trainer.accumulate_grad_batches: sweep only one of them"
            )
        target = _as_int(parse_cli_value(params[EFFECTIVE_BATCH]), EFFECTIVE_BATCH)
        if target <= 0:
            raise SweepParamError(f"{EFFECTIVE_BATCH} must be positive, got {target}")
        world = world_size if world_size is not None else world_size_of(effective)
        accumulation = max(1, _round_half_up(target / (batch * world)))
        set_value("trainer.accumulate_grad_batches", accumulation)
        plan.notes.append(
            f"{EFFECTIVE_BATCH}={target} with data.batch_size={batch} on {world} device(s): "
            f"trainer.accumulate_grad_batches={accumulation} (effective {batch * world * accumulation})"
        )

    # The original's length constraints, or the token budget's own bound.
    encoder = _as_int(effective["data.encoder_max_len"], "data.encoder_max_len")
    decoder = _as_int(effective["data.decoder_max_len"], "data.decoder_max_len")
    if effective.get("data.batching") == "token_budget":
        needed = encoder + decoder
        max_tokens = effective.get("data.max_tokens")
        if max_tokens is None:
            set_value("data.max_tokens", batch * needed)
            plan.notes.append(
                f"token_budget batching without data.max_tokens: data.max_tokens={batch * needed} "
                f"(data.batch_size={batch} full-length examples of {needed} tokens)"
            )
        elif _as_int(max_tokens, "data.max_tokens") < needed:
            set_value("data.max_tokens", needed)
            plan.notes.append(
                f"data.max_tokens {max_tokens} < encoder_max_len + decoder_max_len = {needed}: "
                f"data.max_tokens={needed}"
            )
        return plan
    for above, max_batch, min_accumulation in LENGTH_CAPS:
        if encoder <= above:
            continue
        new_batch = min(batch, max_batch)
        new_accumulation = accumulation
        if new_batch < batch:  # keep the effective batch
            new_accumulation = max(accumulation, _round_half_up(batch * accumulation / new_batch))
        new_accumulation = max(new_accumulation, min_accumulation)
        changes = []
        if new_batch != batch:
            set_value("data.batch_size", new_batch)
            changes.append(f"data.batch_size {batch} -> {new_batch}")
        if new_accumulation != accumulation:
            set_value("trainer.accumulate_grad_batches", new_accumulation)
            changes.append(f"trainer.accumulate_grad_batches {accumulation} -> {new_accumulation}")
        if changes:
            plan.notes.append(
                f"data.encoder_max_len={encoder} > {above}: {', '.join(changes)} "
                f"(effective batch {batch * accumulation} -> {new_batch * new_accumulation})"
            )
        break
    return plan


def _log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def map_params(
    params: Mapping[str, Any],
    base: Mapping[str, Any],
    *,
    fixed: Mapping[str, Any] | None = None,
    world_size: int | None = None,
    log: Callable[[str], None] | None = _log,
) -> list[str]:
    """CLI overrides for one trial's sweep parameters.

    Args:
        params: Parameter name -> value (typed, or ``str()``-formatted as ``${args}`` gives them).
        base: The configuration the trial starts from: a nested config (as in the YAML files, several
            merged with later ones winning) or a flat ``{dotted.key: value}`` mapping.
        fixed: Overrides the command line itself gives after the configs (flat or nested); they win over
            a preset's config.
        world_size: Devices x nodes for ``effective_batch_size``; default: from the trainer settings.
        log: Where each adjustment is reported (one line each); None to stay quiet.

    Returns:
        ``--key=value`` strings: a preset's ``--config=...`` and overrides first (place them right after the
        base ``--config`` arguments), then the mapped parameters and any derived or constrained values.

    Raises:
        SweepParamError: an unknown name, a value outside an alias's choices, or conflicting parameters.
    """
    texts = {str(name): cli_value(value, keeps_floats(str(name))) for name, value in params.items()}
    plan = _plan(texts, flatten(base), flatten(fixed or {}), world_size)
    if log is not None:
        for note in plan.notes:
            log(note)
    return plan.preset_args + plan.override_args()


# ------------------------------------------------------------------------------------------- argv rewrite
def _merge_file_params(parsed: ParsedArgv, file_params: Mapping[str, Any], path: str) -> dict[str, str]:
    """Sweep params from argv and from the agent's file; argv wins for any name both carry."""
    params = dict(parsed.params)
    native_dotted = parsed.dotted()
    for name, value in file_params.items():
        if name in params:
            continue
        if not is_valid_name(name):
            raise SweepParamError(unknown_name_message(name, f"WANDB_SWEEP_PARAM_PATH={path}"))
        key = normalize_key(name)
        if (_is_dotted_key(name) or name in NATIVE_PARAM_KEYS) and key in native_dotted:
            # ${args} already put it on the command line: take argv's value, and treat it as swept.
            params[name] = native_dotted[key]
            parsed.natives = [
                item for item in parsed.natives
                if not (item.name and normalize_key(item.name.lstrip("-")) == key)
            ]
            continue
        params[name] = cli_value(value, keeps_floats(name))
    return params


def _insert_at(parsed: ParsedArgv) -> int:
    """Where a preset's ``--config`` goes: after the last ``--config`` that follows the subcommand,
    else right after the subcommand, else first."""
    sub = next((i for i, item in enumerate(parsed.natives)
                if item.name is None and item.tokens[0] in SUBCOMMANDS), None)
    last_config = None
    for i, item in enumerate(parsed.natives):
        if item.name in ("--config", "-c") and (sub is None or i > sub):
            last_config = i
    if last_config is not None:
        return last_config + 1
    return sub + 1 if sub is not None else 0


def _is_rank_zero(environ: Mapping[str, str]) -> bool:
    return all(environ.get(var, "0") in ("", "0") for var in ("LOCAL_RANK", "NODE_RANK"))


def rewrite_argv(argv: list[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The command line LightningCLI should parse, for a plain run or a sweep trial.

    Sweep parameters come from ``argv`` (``${args}``) and from the agent's ``WANDB_SWEEP_PARAM_PATH``
    file (when the command has no ``${args}``); for a name in both, ``argv`` wins. Native arguments keep
    their order; a preset's config goes right after the base ``--config``; mapped parameters follow the
    command line's own overrides. In a sweep (``WANDB_SWEEP_ID``) without an explicit
    ``--trainer.default_root_dir``, the trial gets ``<DSUM_SWEEP_DIR or outputs/sweeps/<id>>/runs/<run id>``.

    The trial's parameters (original names, coerced values, secrets masked) are stored as JSON in
    ``environ["DSUM_SWEEP_PARAMS"]`` for the run record. Deterministic, so every DDP rank that re-runs
    the same command line gets the same result; adjustments are reported once (rank 0).

    Raises:
        SweepParamError: an unknown parameter or option (nothing has started yet), or a bad value.
    """
    parsed = parse_argv(argv)
    param_path = environ.get("WANDB_SWEEP_PARAM_PATH")
    file_params: dict[str, Any] = {}
    if param_path:
        if Path(param_path).is_file():
            file_params = read_param_file(param_path)
        elif not parsed.params:
            raise SweepParamError(
                f"WANDB_SWEEP_PARAM_PATH={param_path} does not exist and the command line carries no sweep "
                "parameters; run from the directory the agent started in, or unset the variable"
            )
    params = _merge_file_params(parsed, file_params, param_path or "")

    out_items = [list(item.tokens) for item in parsed.natives]
    if params:
        base = load_config_files(parsed.configs())
        fixed = flatten({k: parse_cli_value(v) for k, v in parsed.dotted().items()})
        plan = _plan(params, base, fixed, None)
        at = _insert_at(parsed)
        out_items[at:at] = [[arg] for arg in plan.preset_args]
        out_items.append(plan.override_args())
        if _is_rank_zero(environ):
            for note in plan.notes:
                _log(note)
        typed = {name: parse_cli_value(text) for name, text in params.items()}
        target = environ if isinstance(environ, MutableMapping) else os.environ
        secrets = secret_values(dict(environ))
        target[SWEEP_PARAMS_ENV] = json.dumps(redact(typed, secrets), ensure_ascii=False)
        explicit_dir = any(target_key(n) == "trainer.default_root_dir" for n in params)
    else:
        explicit_dir = False
    explicit_dir = explicit_dir or "trainer.default_root_dir" in parsed.dotted()
    out = [token for item in out_items for token in item]

    sweep_id, run_id = environ.get("WANDB_SWEEP_ID"), environ.get("WANDB_RUN_ID")
    if sweep_id and run_id and not explicit_dir:
        root = environ.get(SWEEP_DIR_ENV) or str(Path("outputs") / "sweeps" / sweep_id)
        out.append(f"--trainer.default_root_dir={Path(root) / 'runs' / run_id}")
    return out
