"""A W&B sweep's search space on Optuna (for :mod:`dsum.sweep.local`): grid combinations in W&B's order, and
what TPE (``bayes``) draws."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml

from dsum.sweep.spec import PARAM_DEFAULTS, SweepSpecError, distribution_of, quantize

# Distributions TPE draws exactly: (value range as (low, high) from the spec, log scale, quantised).
BAYES_FLOATS = {
    "uniform": (lambda s: (s["min"], s["max"]), False),
    "q_uniform": (lambda s: (s["min"], s["max"]), False),
    "log_uniform_values": (lambda s: (s["min"], s["max"]), True),
    "q_log_uniform_values": (lambda s: (s["min"], s["max"]), True),
    # Bounds as natural-log exponents: the same log-uniform law on exp(min)..exp(max).
    "log_uniform": (lambda s: (math.exp(s["min"]), math.exp(s["max"])), True),
    "q_log_uniform": (lambda s: (math.exp(s["min"]), math.exp(s["max"])), True),
    # 1/X log-uniform on 1/max..1/min is X log-uniform on min..max.
    "inv_log_uniform_values": (lambda s: (s["min"], s["max"]), True),
    "inv_log_uniform": (lambda s: (math.exp(-s["max"]), math.exp(-s["min"])), True),
}
BAYES_OTHERS = ("constant", "categorical", "int_uniform")


def _grid_hash(value: Any) -> str:
    """W&B's grid identity of a value (integral floats equal ints: ``3.0`` is ``3``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return hashlib.md5(yaml.safe_dump(value, default_flow_style=True, sort_keys=True).encode()).hexdigest()


def grid_combinations(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a grid sweep, in W&B's order: the product of the parameters in YAML order (first
    slowest), ``int_uniform`` as ``min..max``, ``q_uniform`` as ``arange(min, max, q)``, repeats once; raises
    :class:`SweepSpecError` for a parameter grid search cannot enumerate."""
    import numpy as np

    axes: list[tuple[str, list[Any]]] = []
    for name, spec in (config.get("parameters") or {}).items():
        dist = distribution_of(spec)
        if dist == "constant":
            values = [spec["value"]]
        elif dist == "categorical":
            values = list(spec["values"])
        elif dist == "int_uniform":
            values = list(range(int(spec["min"]), int(spec["max"]) + 1))
        elif dist == "q_uniform":
            values = np.arange(spec["min"], spec["max"], spec.get("q", PARAM_DEFAULTS["q"])).tolist()
        else:
            raise SweepSpecError(f"parameters.{name}: grid search cannot enumerate {dist}; list the points "
                                 "with `values:` or use method random/bayes")
        axes.append((str(name), values))
    combos: dict[tuple[str, ...], dict[str, Any]] = {}  # by the values' grid identities: repeats once
    for combo in itertools.product(*[[(v, _grid_hash(v)) for v in values] for _, values in axes]):
        combos.setdefault(tuple(h for _, h in combo), {name: value for (name, _), (value, _) in zip(axes, combo)})
    return list(combos.values())


def check_bayes_space(config: Mapping[str, Any], path: str | Path | None = None) -> None:
    """Raise :class:`SweepSpecError` naming each parameter TPE cannot draw from exactly (unbounded distributions
    such as ``normal`` or ``beta``, ``probabilities``)."""
    problems = []
    for name, spec in (config.get("parameters") or {}).items():
        dist = distribution_of(spec)
        if dist == "categorical_w_probabilities":
            problems.append(f"parameters.{name}: the local bayes engine (TPE) cannot weight values by "
                            "probabilities; drop `probabilities`, or use method random")
        elif dist not in BAYES_FLOATS and dist not in BAYES_OTHERS:
            problems.append(f"parameters.{name}: the local bayes engine (TPE) cannot draw {dist} exactly "
                            "(it needs bounds); use a bounded distribution, or method random")
    if problems:
        raise SweepSpecError(f"{path or 'sweep config'}: cannot run on the local engine:\n"
                             + "\n".join(f"  - {p}" for p in problems))


def suggest_param(trial: optuna.Trial, name: str, spec: Mapping[str, Any]) -> Any:
    """One parameter drawn by the study's sampler, in W&B's form (quantised, exponentiated, ...)."""
    dist = distribution_of(spec)
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        values = list(spec["values"])
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            return trial.suggest_categorical(name, values)
        keys = [json.dumps(v, sort_keys=True) for v in values]  # Optuna's choices must be scalars
        return values[keys.index(trial.suggest_categorical(name, keys))]
    if dist == "int_uniform":
        return trial.suggest_int(name, int(spec["min"]), int(spec["max"]))
    bounds, log = BAYES_FLOATS[dist]
    low, high = bounds(spec)
    value = trial.suggest_float(name, float(low), float(high), log=log)
    return quantize(value, spec.get("q", PARAM_DEFAULTS["q"])) if dist.startswith("q_") else value
