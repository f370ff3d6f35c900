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

The name tables live in :mod:`dsum.sweep.names` and the command-line parsing in :mod:`dsum.sweep.argv`;
both are re-exported here, so ``from dsum.sweep.params import ...`` reaches all three.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsum.secrets import redact, secret_values
from dsum.sweep.argv import SUBCOMMANDS, ParsedArgv, cli_value, coerce_cli_string, parse_argv, parse_cli_value
from dsum.sweep.names import (
    ALIASES,
    BF16,
    DEFAULTS,
    DERIVED,
    EFFECTIVE_BATCH,
    FP16,
    LENGTH_CAPS,
    NATIVE_PARAM_KEYS,
    PRESET_PARAM,
    PRESETS,
    Alias,
    Preset,
    SweepParamError,
    is_dotted_key,
    is_valid_name,
    keeps_floats,
    normalize_key,
    target_key,
    unknown_name_message,
    valid_names,
)

# Defined here before names.py and argv.py were split off; still importable from here.
from dsum.sweep.argv import NATIVE_FLAGS as NATIVE_FLAGS
from dsum.sweep.argv import NATIVE_VALUED as NATIVE_VALUED
from dsum.sweep.argv import ArgItem as ArgItem
from dsum.sweep.names import BATCHING as BATCHING
from dsum.sweep.names import BOOL_KEYS as BOOL_KEYS
from dsum.sweep.names import FLOAT_KEYS as FLOAT_KEYS
from dsum.sweep.names import FRACTION_KEYS as FRACTION_KEYS
from dsum.sweep.names import INT_KEYS as INT_KEYS
from dsum.sweep.names import NATIVE_ROOTS as NATIVE_ROOTS
from dsum.sweep.names import OPTIMIZERS as OPTIMIZERS
from dsum.sweep.names import SCHEDULERS as SCHEDULERS

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


# ------------------------------------------------------------------------------------------- config files
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
        flag = name if (is_dotted_key(name) or name in NATIVE_PARAM_KEYS) else key
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
        if (is_dotted_key(name) or name in NATIVE_PARAM_KEYS) and key in native_dotted:
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
