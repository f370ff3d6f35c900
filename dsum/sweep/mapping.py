"""Sweep parameters -> LightningCLI arguments.

A ``wandb agent`` runs ``main.py fit --config ... --lr=1e-05 --train_batch_size=16.0`` (``${args}``, ``str()``
values) and writes the same parameters to ``$WANDB_SWEEP_PARAM_PATH``; :func:`sweep_trial` turns that into what
LightningCLI parses (jsonargparse does the typing). dsum's own parts: the original project's names
(:data:`ALIASES`), ``model_preset`` (:data:`PRESETS`), derived values (:data:`DERIVED`), and the original sweep's
length constraints and the token-budget rule. Later wins: base ``--config``, preset config and checkpoint, the
command's dotted overrides, the sweep's parameters, then the derived rules.
"""

from __future__ import annotations

import ast
import difflib
import functools
import json
import math
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import yaml
from jsonargparse import Namespace

from dsum.callbacks.record import SWEEP_PARAMS_ENV
from dsum.constants import SWEEP_DIR_ENV
from dsum.infra.log import note
from dsum.infra.secrets import redact, secret_values
from dsum.sweep.cli_keys import FRACTION_KEYS, cli_roots, fit_parser, key_kind, native_options  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SweepParamError(ValueError):
    """A sweep parameter that maps to no CLI key, or a value it cannot take."""


@dataclass(frozen=True)
class Alias:
    """A sweep parameter name for one CLI key; with ``values``, only those sweep values are accepted."""

    key: str
    values: Mapping[Any, Any] | None = None


_ADAMW = dict.fromkeys(("adamw", "adamw_torch", "adamw_hf", "adamw_torch_fused"), "adamw")
_SCHEDULES = {**{s: s for s in ("cosine", "linear", "cosine_with_restarts", "constant")},
              "constant_with_warmup": "constant"}
_TABLE: list[tuple[tuple[str, ...], str, Mapping[Any, Any] | None]] = [
    (("lr", "learning_rate"), "model.learning_rate", None),
    (("train_batch_size", "per_device_train_batch_size", "batch_size"), "data.batch_size", None),
    (("eval_batch_size", "per_device_eval_batch_size"), "data.eval_batch_size", None),
    (("encoder_max_len", "max_source_length"), "data.encoder_max_len", None),
    (("decoder_max_len", "max_target_length"), "data.decoder_max_len", None),
    (("max_tokens",), "data.max_tokens", None),
    (("batching",), "data.batching", {b: b for b in ("length_grouped", "token_budget", "random")}),
    (("weight_decay",), "model.weight_decay", None),
    (("warmup_ratio",), "model.warmup_ratio", None),
    (("num_train_epochs", "epochs", "max_epochs"), "trainer.max_epochs", None),
    (("max_steps",), "trainer.max_steps", None),
    (("lr_scheduler_type", "scheduler"), "model.lr_scheduler", _SCHEDULES),
    (("num_cycles",), "model.num_cycles", None),
    (("gradient_accumulation_steps", "accumulate_grad_batches"), "trainer.accumulate_grad_batches", None),
    (("max_grad_norm", "gradient_clip_val"), "trainer.gradient_clip_val", None),
    (("label_smoothing", "label_smoothing_factor"), "model.label_smoothing", None),
    (("early_stopping_patience",), "early_stopping.patience", None),
    (("early_stopping_threshold",), "early_stopping.min_delta", None),
    (("optim", "optimizer"), "model.optimizer", {**_ADAMW, "adafactor": "adafactor",
                                                 "paged_adamw_8bit": "paged_adamw_8bit"}),
    (("num_beams",), "model.generation.num_beams", None),
    (("no_repeat_ngram_size",), "model.generation.no_repeat_ngram_size", None),
    (("length_penalty",), "model.generation.length_penalty", None),
    (("generation_max_length", "max_new_tokens"), "model.generation.max_new_tokens", None),
    (("min_new_tokens",), "model.generation.min_new_tokens", None),
    (("do_sample",), "model.generation.do_sample", None),
    (("temperature",), "model.generation.temperature", None),
    (("top_p",), "model.generation.top_p", None),
    (("seed",), "seed_everything", None),
    (("fp16",), "trainer.precision", {True: "16-mixed", False: "32-true"}),
    (("bf16",), "trainer.precision", {True: "bf16-mixed", False: "32-true"}),
    (("precision",), "trainer.precision", None),
    (("pretrained", "model_name_or_path"), "model.pretrained", None),
    (("lora_r",), "model.lora.r", None),
    (("lora_alpha",), "model.lora.alpha", None),
    (("lora_dropout",), "model.lora.dropout", None),
    (("lora_dora", "use_dora"), "model.lora.use_dora", None),
    (("lora_rslora", "use_rslora"), "model.lora.use_rslora", None),
    (("lora_init",), "model.lora.init", None),
    (("lora_plus_ratio", "loraplus_lr_ratio"), "model.lora.plus_lr_ratio", None),
    (("neftune_alpha", "neftune_noise_alpha"), "model.neftune_alpha", None),
    (("packing",), "model.packing", None),
    (("prompt",), "data.prompt_template", None),
    (("max_nonfinite_steps",), "divergence.max_nonfinite_steps", None),
    (("save_every_n_steps",), "last_checkpoint.every_n_train_steps", None),
]
ALIASES: dict[str, Alias] = {name: Alias(key, values) for names, key, values in _TABLE for name in names}

PRESET_PARAM = "model_preset"
# Each family with its own config (and so its own optimiser, lr and lengths) and checkpoint.
PRESETS: dict[str, tuple[str, dict[str, str]]] = {
    "kobart": ("configs/kobart.yaml", {}),
    "kobart-base-v2": ("configs/kobart.yaml", {"model.pretrained": "gogamza/kobart-base-v2"}),
    "kobart-summary-v3": ("configs/kobart.yaml", {"model.pretrained": "EbanLee/kobart-summary-v3"}),
    "kogpt2": ("configs/kogpt2.yaml", {}),
    "pko-t5-small": ("configs/pko-t5.yaml", {}),
    "pko-t5-base": ("configs/pko-t5.yaml", {"model.pretrained": "paust/pko-t5-base"}),
    "mt5-small": ("configs/mt5.yaml", {}),
    "mt5-base": ("configs/mt5.yaml", {"model.pretrained": "google/mt5-base"}),
    "tiny-bart": ("configs/quickstart.yaml", {}),
    "tiny-t5": ("configs/quickstart-t5.yaml", {}),
    "tiny-gpt2": ("configs/quickstart-gpt2.yaml", {}),
}
EFFECTIVE_BATCH = "effective_batch_size"
LR_SCALE = "learning_rate_scale"
DERIVED = {
    EFFECTIVE_BATCH: "trainer.accumulate_grad_batches = max(1, round(effective / (data.batch_size x world size)))",
    LR_SCALE: "model.learning_rate = the config's (preset's) own learning rate x this factor",
}
# The original sweep's `constraints:` as (above, max_batch, min_accumulation), most restrictive first.
LENGTH_CAPS = ((1024, 8, 2), (512, 16, 1))


def __getattr__(name: str) -> Any:
    """``ROOTS`` and ``NATIVE_OPTIONS``, read from the CLI parser when first used."""
    if name == "ROOTS":
        return cli_roots()
    if name == "NATIVE_OPTIONS":
        return native_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def bool_aliases() -> frozenset[str]:
    """Aliases that take true/false: a bool key's, or one whose value map reads booleans (``fp16``)."""
    return frozenset(name for name, alias in ALIASES.items()
                     if (alias.values and True in alias.values) or key_kind(alias.key) == "bool")


def valid_names() -> list[str]:
    """Every non-dotted sweep parameter name."""
    return sorted([*ALIASES, PRESET_PARAM, *DERIVED, "seed_everything", "ckpt_path"])


def target_key(name: str) -> str | None:
    """The dotted CLI key a parameter sets (None for ``model_preset`` and derived values); raises
    :class:`SweepParamError` for an invalid name."""
    if name in ALIASES:
        return ALIASES[name].key
    if name == PRESET_PARAM or name in DERIVED:
        return None
    parts = name.split(".")
    if name in ("seed_everything", "ckpt_path") or (len(parts) >= 2 and parts[0] in cli_roots()):
        return ".".join(p for i, p in enumerate(parts) if not (i == 1 and p == "init_args"))
    raise SweepParamError(unknown_name_message(name))


def unknown_name_message(name: str, source: str = "") -> str:
    """A readable refusal listing every valid name (and the closest ones)."""
    close = difflib.get_close_matches(name, [*valid_names(), *PRESETS], n=3, cutoff=0.6)
    return (f"unknown sweep parameter {name!r}{f' (from {source})' if source else ''}."
            + (f" Did you mean {', '.join(close)}?" if close else "")
            + f"\n  aliases: {', '.join(sorted(ALIASES))}\n  preset: {PRESET_PARAM} (one of {', '.join(PRESETS)})"
            + f"\n  derived: {', '.join(DERIVED)}\n  native: seed_everything, ckpt_path, or any dotted key under "
            + f"{', '.join(r + '.' for r in cli_roots())} (see `python main.py fit --help`)")


def read_value(text: str, key: str = "") -> Any:
    """A value as W&B writes it (``str()``: ``64.0``, ``None``, ``True``, ``[1, 2]``) back as a typed value."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return typed(parse(text), key)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


def typed(value: Any, key: str = "") -> Any:
    """Integral floats as ints (except for Lightning's fraction keys), tuples as lists, recursively."""
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and key not in FRACTION_KEYS:
        return int(value)
    return value


def cli_text(value: Any) -> str:
    """A typed value as LightningCLI reads it (strings verbatim, everything else as JSON)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def map_value(name: str, value: Any) -> tuple[str, Any]:
    """The dotted key and value one (non-preset, non-derived) parameter sets, through the alias's value map;
    raises :class:`SweepParamError` for an unknown name or a value outside the alias's choices."""
    key = target_key(name)
    if key is None:
        raise SweepParamError(f"{name} is a preset or derived value, not a plain key")
    alias = ALIASES.get(name)
    if alias is None or alias.values is None:
        return key, value
    try:
        return key, alias.values[value]
    except (KeyError, TypeError):
        raise SweepParamError(f"{name}={value!r} is not one of: {', '.join(map(str, alias.values))}") from None


@dataclass
class SweepTrial:
    """One run's command line for LightningCLI, with the sweep parameters (if any) and the rules that apply to
    the typed config (:meth:`apply_rules`, a ``DsumCLI`` config hook) and the trainer (:meth:`callbacks`)."""

    cli_args: list[str]
    params: dict[str, Any] = field(default_factory=dict)

    def apply_rules(self, config: Namespace) -> None:
        """Length constraints or the token-budget rule, and ``learning_rate_scale``, on the parsed config."""
        if not self.params:
            return
        if LR_SCALE in self.params:
            model = config.model.init_args
            scaled = model.learning_rate * float(self.params[LR_SCALE])
            _note(f"{LR_SCALE}={self.params[LR_SCALE]}: model.learning_rate {model.learning_rate:g} -> {scaled:g}")
            model.learning_rate = scaled
        data, trainer = config.data, config.trainer
        if data.batching == "token_budget":
            needed = data.encoder_max_len + data.decoder_max_len
            if data.max_tokens is None or data.max_tokens < needed:
                budget = data.batch_size * needed if data.max_tokens is None else needed
                _note(f"token_budget batching: data.max_tokens {data.max_tokens} -> {budget} "
                      f"(encoder_max_len + decoder_max_len = {needed})")
                data.max_tokens = budget
            return
        batch, accumulation = data.batch_size, trainer.accumulate_grad_batches or 1
        for above, max_batch, min_accumulation in LENGTH_CAPS:
            if data.encoder_max_len > above:
                data.batch_size = min(batch, max_batch)
                keep = math.floor(batch * accumulation / data.batch_size + 0.5)  # rounded half up
                trainer.accumulate_grad_batches = max(accumulation, keep, min_accumulation)
                if (data.batch_size, trainer.accumulate_grad_batches) != (batch, accumulation):
                    _note(f"data.encoder_max_len={data.encoder_max_len} > {above}: data.batch_size {batch} -> "
                          f"{data.batch_size}, trainer.accumulate_grad_batches {accumulation} -> "
                          f"{trainer.accumulate_grad_batches}")
                return

    def callbacks(self) -> list[L.Callback]:
        """``EffectiveBatchSize`` when the trial sets ``effective_batch_size``."""
        return [EffectiveBatchSize(int(self.params[EFFECTIVE_BATCH]))] if EFFECTIVE_BATCH in self.params else []


class EffectiveBatchSize(L.Callback):
    """Sets ``trainer.accumulate_grad_batches`` so that batch size x world size x accumulation is closest to
    ``effective`` (at least 1), with the world size Lightning resolved.

    Args:
        effective: The effective batch size to reach.
    """

    def __init__(self, effective: int) -> None:
        if effective <= 0:
            raise SweepParamError(f"{EFFECTIVE_BATCH} must be positive, got {effective}")
        self.effective = effective

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        batch = trainer.datamodule.batch_size
        trainer.accumulate_grad_batches = max(1, math.floor(self.effective / (batch * trainer.world_size) + 0.5))
        _note(f"{EFFECTIVE_BATCH}={self.effective} with data.batch_size={batch} on {trainer.world_size} device(s): "
              f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}")


def _note(message: str) -> None:
    """A ``dsum.sweep:`` line on stderr, on global rank 0 only."""
    note(f"dsum.sweep: {message}")


def split_argv(argv: Sequence[str], source: str = "the command line") -> tuple[list[str], dict[str, Any]]:
    """Native arguments (kept in order, W&B-formatted dotted values read back) and sweep parameters by name.
    Takes ``--k=v`` and ``--k v``, and a boolean parameter as a bare flag (``${args_no_boolean_flags}``); raises
    :class:`SweepParamError` for an option that is neither native nor a sweep parameter, or one given twice."""
    natives: list[str] = []
    params: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, text = token.lstrip("-").partition("=")
        dotted = "." in name and name.split(".")[0].rstrip("+") in cli_roots()
        if not token.startswith("-") or token[1:2].isdigit() or name in native_options() or dotted:
            if eq and dotted:
                token = f"--{name}={cli_text(read_value(text, target_key(name.rstrip('+')) or ''))}"
            natives.append(token)
        elif name in valid_names():
            if not eq:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                bool_next = nxt in ("True", "False", "true", "false")
                if nxt is not None and not nxt.startswith("--") and (name not in bool_aliases() or bool_next):
                    text, i = nxt, i + 1
                elif name in bool_aliases():
                    text = "true"
                else:
                    raise SweepParamError(f"sweep parameter --{name} (from {source}) has no value")
            if name in params:
                raise SweepParamError(f"sweep parameter --{name} is given twice (from {source})")
            params[name] = read_value(text, target_key(name) or "")
        elif "." in name:
            raise SweepParamError(f"unknown option --{name} (from {source}): dotted keys must start with one of "
                                  f"{', '.join(r + '.' for r in cli_roots())}")
        else:
            raise SweepParamError(unknown_name_message(name, source))
        i += 1
    return natives, params


def read_param_file(path: str | Path) -> dict[str, Any]:
    """The run's parameters from a W&B agent's ``WANDB_SWEEP_PARAM_PATH`` file (``{name: {value: v}}``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SweepParamError(f"cannot read sweep parameter file {path}: {err}") from err
    if not isinstance(data, dict):
        raise SweepParamError(f"sweep parameter file {path} must be a YAML mapping")
    return {str(k): v["value"] if isinstance(v, Mapping) and "value" in v else v
            for k, v in data.items() if k != "wandb_version" and not str(k).startswith("_")}


def resolve_config_path(path: str) -> Path | None:
    """``path`` from the current directory, else under the repository root (None when neither exists)."""
    return next((candidate for candidate in (Path(path), REPO_ROOT / path) if candidate.is_file()), None)


def sweep_trial(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> SweepTrial:
    """The command line LightningCLI should parse, for a plain run or a sweep trial; raises
    :class:`SweepParamError` for an unknown parameter or option, or a bad value.

    Parameters come from ``argv`` (``${args}``) and from ``WANDB_SWEEP_PARAM_PATH``; for a name in both, ``argv``
    wins. A preset's config goes right after the last ``--config`` that follows the subcommand; mapped parameters
    go last. In a W&B sweep without an explicit ``--trainer.default_root_dir``, the trial's directory is
    ``<DSUM_SWEEP_DIR or outputs/sweeps/<sweep id>>/runs/<run id>``. The parameters (secrets masked) are handed to
    the run record through ``DSUM_SWEEP_PARAMS``.
    """
    natives, params = split_argv(argv)
    param_path = environ.get("WANDB_SWEEP_PARAM_PATH")
    if param_path and not Path(param_path).is_file() and not params:
        raise SweepParamError(f"WANDB_SWEEP_PARAM_PATH={param_path} does not exist and the command line carries no "
                              "sweep parameters; run from the directory the agent started in, or unset the variable")
    given = {arg.partition("=")[0].lstrip("-") for arg in natives}
    if param_path and Path(param_path).is_file():
        for name, value in read_param_file(param_path).items():
            if not is_valid_name(name):
                raise SweepParamError(unknown_name_message(name, f"WANDB_SWEEP_PARAM_PATH={param_path}"))
            if name not in params and name not in given:
                params[name] = typed(value, target_key(name) or "")
            elif name in given:  # ${args} put it on the command line already: it is swept, argv's value stands
                params.setdefault(name, next(read_value(a.partition("=")[2], target_key(name) or "")
                                             for a in natives if a.partition("=")[0].lstrip("-") == name))
    overrides, set_by = [], {}
    for name, value in params.items():
        if name == PRESET_PARAM or name in DERIVED:
            continue
        key, mapped = map_value(name, value)
        if key in set_by:
            raise SweepParamError(f"{set_by[key]} and {name} both set {key}: sweep only one of them")
        set_by[key] = name
        if name not in given:
            overrides.append(f"--{key}={cli_text(mapped)}")
    if EFFECTIVE_BATCH in params and "trainer.accumulate_grad_batches" in set_by:
        raise SweepParamError(f"{EFFECTIVE_BATCH} and {set_by['trainer.accumulate_grad_batches']} both set "
                              "trainer.accumulate_grad_batches: sweep only one of them")
    if PRESET_PARAM in params:
        natives = _with_preset(natives, str(params[PRESET_PARAM]))
    args = natives + overrides
    if params:
        target = environ if isinstance(environ, MutableMapping) else os.environ
        target[SWEEP_PARAMS_ENV] = json.dumps(redact(params, secret_values(dict(environ))), ensure_ascii=False)
    sweep_id, run_id = environ.get("WANDB_SWEEP_ID"), environ.get("WANDB_RUN_ID")
    if sweep_id and run_id and not any(a.startswith("--trainer.default_root_dir") for a in args):
        root = environ.get(SWEEP_DIR_ENV) or str(Path("outputs") / "sweeps" / sweep_id)
        args.append(f"--trainer.default_root_dir={Path(root) / 'runs' / run_id}")
    return SweepTrial(args, params)


def target_key_or_none(name: str) -> str | None:
    """:func:`target_key`, or None for an invalid name."""
    try:
        return target_key(name)
    except SweepParamError:
        return None


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is an alias, ``model_preset``, a derived value or a dotted key under a known root."""
    return name in valid_names() or target_key_or_none(name) is not None


def _with_preset(natives: list[str], name: str) -> list[str]:
    if name not in PRESETS:
        raise SweepParamError(f"{PRESET_PARAM}={name!r} is not one of: {', '.join(PRESETS)}")
    config, overrides = PRESETS[name]
    path = resolve_config_path(config)
    if path is None:
        raise SweepParamError(f"{PRESET_PARAM}={name} needs {config}, found neither in {Path.cwd()} nor in {REPO_ROOT}")
    sub = next((i for i, a in enumerate(natives) if a in SUBCOMMANDS), -1)
    at = sub + 1
    for i, arg in enumerate(natives):
        if i > sub and arg.partition("=")[0] in ("--config", "-c"):
            at = i + (1 if "=" in arg else 2)
    return natives[:at] + [f"--config={path}", *(f"--{k}={v}" for k, v in overrides.items())] + natives[at:]
