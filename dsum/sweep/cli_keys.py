"""What LightningCLI accepts, read from its own parser: the groups of dotted keys (``model``, ``data``, ...), the
options ``main.py fit`` takes itself, and the value type of every dotted key. The parser is built on first use,
once per process; importing this module builds nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from jsonargparse import ActionSubCommands, ArgumentParser

# The model classes dsum ships (`--model=<class>`): where the `model.*` keys and their types come from.
MODEL_CLASSES = ("Seq2SeqSummarizer", "CausalLMSummarizer", "InstructSummarizer")
# Lightning reads an int as a count and a float as a fraction here: `1.0` must not become `1`.
FRACTION_KEYS = {f"trainer.limit_{s}_batches" for s in ("train", "val", "test", "predict")} | {
    "trainer.val_check_interval", "trainer.overfit_batches"}


@functools.cache
def fit_parser() -> ArgumentParser:
    """The parser of ``main.py fit`` (jsonargparse's ``capture_parser`` on :class:`dsum.cli.DsumCLI`)."""
    from jsonargparse import capture_parser

    from dsum.cli import DsumCLI

    parser = capture_parser(lambda: DsumCLI(args=[]))
    subcommands = next(a for a in parser._actions if isinstance(a, ActionSubCommands))
    return subcommands.choices["fit"]


@functools.cache
def model_parsers() -> tuple[ArgumentParser, ...]:
    """One parser per class in :data:`MODEL_CLASSES`, with its arguments under ``model.``."""
    import dsum.models

    parsers = tuple(ArgumentParser(exit_on_error=False) for _ in MODEL_CLASSES)
    for parser, name in zip(parsers, MODEL_CLASSES, strict=True):
        parser.add_class_arguments(getattr(dsum.models, name), "model")
    return parsers


@functools.cache
def cli_roots() -> tuple[str, ...]:
    """The groups of dotted CLI keys (``model``, ``data``, ``trainer``, ...), the model and data first."""
    found = dict.fromkeys(a.dest.split(".")[0] for a in fit_parser()._actions if "." in a.dest)
    return tuple(sorted(found, key=lambda root: {"model": 0, "data": 1}.get(root, 2)))


@functools.cache
def native_options() -> frozenset[str]:
    """Option names ``main.py fit`` takes itself (``config``, ``c``, ``ckpt_path``, the roots, ...), without dashes."""
    return frozenset(o.lstrip("-") for a in fit_parser()._actions for o in a.option_strings if "." not in o)


Kind = Literal["int", "float", "bool", "str", "other"]


@functools.cache
def key_kind(key: str) -> Kind:
    """The value type LightningCLI gives a dotted key (``int | None`` is ``int``); ``other`` for an unknown key, a
    mix of types, or a ``model.*`` key the model classes type differently."""
    parsers = model_parsers() if key.split(".")[0] == "model" else (fit_parser(),)
    kinds = {kind for parser in parsers if (kind := _kind_in(parser, key)) is not None}
    if len(kinds) != 1 or key in FRACTION_KEYS:  # Lightning reads an int and a float differently there
        return "other"
    return kinds.pop()


def _kind_in(parser: ArgumentParser, key: str) -> Kind | None:
    """``key``'s kind in ``parser``, walking into dataclass fields (``model.lora.r``); None if it has no such key."""
    actions = {a.dest: a for a in parser._actions}
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        if (action := actions.get(".".join(parts[:cut]))) is not None:
            hint = getattr(action, "_typehint", None) or action.type
            for part in parts[cut:]:
                hint = _field_hint(hint, part)
            return None if hint is None else _kind_of(hint)
    return None


def _field_hint(hint: Any, name: str) -> Any:
    """The type of field ``name`` of a dataclass hint (``LoraSettings | None``), or None."""
    classes = [a for a in _union_args(hint) if dataclasses.is_dataclass(a)]
    if len(classes) != 1 or name not in {f.name for f in dataclasses.fields(classes[0])}:
        return None
    return typing.get_type_hints(classes[0])[name]


def _union_args(hint: Any) -> list[Any]:
    """The members of a union hint without ``None`` (the hint itself when it is no union)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return [a for a in args if a is not type(None)]


def _kind_of(hint: Any) -> Kind:
    """The widest of bool/int/float for a mix of them (``int | bool`` is ``int``), ``str`` for strings and string
    literals, else ``other``. ``bool | None`` is ``other``: null is a value there, which a true/false check refuses."""
    args = _union_args(hint)
    if args and all(a in (bool, int, float) for a in args):
        if args == [bool] and type(None) in typing.get_args(hint):
            return "other"
        return "float" if float in args else "int" if int in args else "bool"
    if args and all(a is str or _is_str_literal(a) for a in args):
        return "str"
    return "other"


def _is_str_literal(hint: Any) -> bool:
    return typing.get_origin(hint) is Literal and all(isinstance(v, str) for v in typing.get_args(hint))
