"""A command line as text: native arguments apart from sweep parameters, values as LightningCLI reads them.

:func:`parse_argv` splits what a ``wandb agent`` runs (``--k=v`` and ``--k v``, bare boolean flags) into
native arguments, kept in order, and sweep parameters; :func:`coerce_cli_string` and :func:`cli_value`
write values as LightningCLI accepts them (``64.0`` -> ``64``, ``None`` -> ``null``, ``[1, 2]`` -> JSON).
:mod:`dsum.sweep.params` maps the parameters and re-exports these names.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dsum.sweep.names import (
    ALIASES,
    BOOL_KEYS,
    NATIVE_ROOTS,
    Alias,
    SweepParamError,
    is_dotted_key,
    is_valid_name,
    keeps_floats,
    normalize_key,
    unknown_name_message,
)

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Native options that take a value, and those that never take a separate one.
NATIVE_VALUED = frozenset(
    {"--config", "-c", "--ckpt_path", "--seed_everything", "--verbose", "--return_predictions"}
    | {f"--{root}" for root in NATIVE_ROOTS}
)
NATIVE_FLAGS = frozenset({"--print_config", "-h", "--help"})


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
            if is_dotted_key(bare.rstrip("+")) or bare == "seed_everything":
                out[normalize_key(bare)] = item.value
            elif bare in ("model", "data") and "." in item.value and "/" not in item.value:
                out[f"{bare}.class_path"] = item.value
        return out


def _value_option(bare: str) -> bool:
    return f"--{bare}" in NATIVE_VALUED or is_dotted_key(bare.rstrip("+"))


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
