"""The one table of sweep parameter names: aliases, presets, derived values, key types.

Every non-dotted name a sweep may use is defined here (:data:`ALIASES`, :data:`PRESETS`, :data:`DERIVED`,
the native top-level keys), beside the LightningCLI roots that dotted keys start from, with the lookups
over them (:func:`is_valid_name`, :func:`target_key`). :mod:`dsum.sweep.params` maps values through these
tables and re-exports them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Roots of the dotted keys LightningCLI accepts (`python main.py fit --help`).
NATIVE_ROOTS = ("model", "data", "trainer", "checkpoint", "early_stopping", "outputs", "submission")
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


def is_dotted_key(name: str) -> bool:
    """Whether ``name`` is a dotted key under one of :data:`NATIVE_ROOTS` (``trainer.max_epochs``)."""
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
        or is_dotted_key(name)


def target_key(name: str) -> str | None:
    """The dotted CLI key a parameter sets (None for ``model_preset`` and derived values).

    Raises:
        SweepParamError: ``name`` is not a valid sweep parameter.
    """
    if name in ALIASES:
        return ALIASES[name].key
    if name == PRESET_PARAM or name in DERIVED:
        return None
    if name in NATIVE_PARAM_KEYS or is_dotted_key(name):
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


def keeps_floats(name: str) -> bool:
    """Whether ``1.0`` and ``1`` mean different things for this key (count vs fraction)."""
    return normalize_key(name) in FRACTION_KEYS
