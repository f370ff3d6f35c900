"""Sweep YAMLs: load, check against W&B's sweep schema and dsum's CLI, and sample from them.

:func:`validate_sweep` catches, before a sweep is created, what W&B would refuse and what it accepts but would waste
the sweep (unmapped names, unlogged metrics, grid over a continuous distribution, a ``command:`` that cannot run).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dsum.constants import MONITOR
from dsum.sweep import mapping as P
from dsum.sweep.cli_keys import key_kind

# Value types of the parameters that are no CLI key (a CLI key's type is read from the parser).
SWEEP_ONLY_KINDS: dict[str, P.Kind] = {P.EFFECTIVE_BATCH: "int", P.LR_SCALE: "float", "fp16": "bool", "bf16": "bool"}


class SweepSpecError(ValueError):
    """A sweep YAML that W&B would reject or that would not run as intended."""


class SweepSpecWarning(UserWarning):
    """A sweep YAML that runs, but probably not as intended (e.g. an endless random search)."""


# Top-level keys of W&B's sweep config schema (wandb/sweeps config/schema.json).
TOP_LEVEL_KEYS = frozenset({
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity", "project",
    "method", "command", "name", "run_cap", "metric", "metrics", "scheduler", "early_terminate", "parameters",
})
METHODS = ("grid", "random", "bayes")


# What the trainer logs, with the direction that improves it (None: no natural direction).
LOGGED_METRICS: dict[str, str | None] = {
    "train/loss": "minimize",
    "val/loss": "minimize",
    "val/rouge1": "maximize",
    "val/rouge2": "maximize",
    "val/rougeL": "maximize",
    MONITOR: "maximize",
    "val/rouge_mean_best": "maximize",
    "val/gen_len": None,
    "test/loss": "minimize",
    "test/rouge1": "maximize",
    "test/rouge2": "maximize",
    "test/rougeL": "maximize",
    "test/rouge_mean": "maximize",
    "test/gen_len": None,
}
METRIC_KEYS = frozenset({"name", "goal", "target", "impute", "impute_while_running"})
METRIC_GOALS = ("maximize", "minimize")
# Keys of `early_terminate: {type: hyperband, ...}`, the one early termination W&B has.
EARLY_TERMINATE_KEYS = frozenset({"type", "min_iter", "max_iter", "s", "eta", "strict"})

# Distribution -> (required keys, optional keys). `None` keys of W&B's schema are listed as optional.
DISTRIBUTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "constant": (frozenset({"value"}), frozenset()),
    "categorical": (frozenset({"values"}), frozenset()),
    "categorical_w_probabilities": (frozenset({"values", "probabilities"}), frozenset()),
    "int_uniform": (frozenset({"min", "max"}), frozenset()),
    "uniform": (frozenset({"min", "max"}), frozenset()),
    "q_uniform": (frozenset({"min", "max"}), frozenset({"q"})),
    "log_uniform": (frozenset({"min", "max"}), frozenset()),
    "log_uniform_values": (frozenset({"min", "max"}), frozenset()),
    "q_log_uniform": (frozenset({"min", "max"}), frozenset({"q"})),
    "q_log_uniform_values": (frozenset({"min", "max"}), frozenset({"q"})),
    "inv_log_uniform": (frozenset({"min", "max"}), frozenset()),
    "inv_log_uniform_values": (frozenset({"min", "max"}), frozenset()),
    "normal": (frozenset(), frozenset({"mu", "sigma"})),
    "q_normal": (frozenset(), frozenset({"mu", "sigma", "q"})),
    "log_normal": (frozenset(), frozenset({"mu", "sigma"})),
    "q_log_normal": (frozenset(), frozenset({"mu", "sigma", "q"})),
    "beta": (frozenset(), frozenset({"a", "b"})),
    "q_beta": (frozenset(), frozenset({"a", "b", "q"})),
}
# W&B's defaults for a distribution's optional keys.
PARAM_DEFAULTS = {"q": 1, "mu": 0.0, "sigma": 1.0, "a": 1.0, "b": 1.0}
# W&B's grid search accepts only these (and refuses probabilities).
GRID_DISTRIBUTIONS = frozenset({"constant", "categorical", "int_uniform", "q_uniform"})
# Distributions whose draws are integral (q_* only with an integral q).
INTEGRAL_DISTRIBUTIONS = frozenset({"int_uniform"})
# Macros that expand to something LightningCLI cannot parse.
UNUSABLE_MACROS = {
    "${args_no_hyphens}": "expands to name=value without dashes",
    "${args_json}": "expands to one JSON string",
    "${args_json_file}": "expands to a file path",
    "${args_append_hydra}": "expands to Hydra +name=value",
    "${args_override_hydra}": "expands to Hydra ++name=value",
    "${args_dict}": "is not a command macro",
}


# Hostile YAML: aliases can make a few hundred bytes expand to billions of nodes (an "alias bomb").
MAX_SWEEP_BYTES = 1_000_000
MAX_SWEEP_NODES = 100_000


def _expanded_nodes(node: yaml.Node, path: Path) -> int:
    """How many nodes ``node`` becomes once its aliases are expanded, counting each shared node once; refuses
    cycles and totals above :data:`MAX_SWEEP_NODES`."""
    sizes: dict[yaml.Node, int] = {}  # nodes hash by identity
    active: set[yaml.Node] = set()

    def size(current: yaml.Node) -> int:
        if current in sizes:
            return sizes[current]
        if current in active:
            raise SweepSpecError(f"{path}: a YAML alias refers to itself (a recursive structure); not a sweep config")
        active.add(current)
        total = 1
        children = current.value if isinstance(current, yaml.CollectionNode) else []
        if isinstance(current, yaml.MappingNode):
            children = [part for pair in children for part in pair]
        for child in children:
            total += size(child)
            if total > MAX_SWEEP_NODES:
                raise SweepSpecError(
                    f"{path}: expands to more than {MAX_SWEEP_NODES:,} YAML nodes once its aliases (*name) are "
                    "expanded; refused as a possible alias bomb. Write the values out, without anchors/aliases")
        active.discard(current)
        sizes[current] = total
        return total

    return size(node)


def load_sweep(path: str | Path) -> dict[str, Any]:
    """A sweep YAML as a dict (``yaml.safe_load``); raises :class:`SweepSpecError` for a file that is unreadable,
    not YAML, not a mapping, or too large (alias bombs are refused before they expand)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SweepSpecError(f"cannot read sweep config {path}: {err}") from err
    if len(text) > MAX_SWEEP_BYTES:
        raise SweepSpecError(f"{path}: {len(text):,} characters; a sweep config is at most {MAX_SWEEP_BYTES:,}")
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            _expanded_nodes(node, path)
        config = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        hint = ("\n  hint: write `command:` as a block list (one `- ${env}` item per line); a flow list "
                "`[${env}, ...]` is not valid YAML") if "${" in text and "[" in text else ""
        raise SweepSpecError(f"{path}: not valid YAML: {err}{hint}") from err
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(config, dict):
        raise SweepSpecError(f"{path}: a sweep config must be a YAML mapping, got {type(config).__name__}")
    return config


def distribution_of(spec: Mapping[str, Any]) -> str:
    """The distribution W&B infers for a parameter spec (``{min, max}`` of ints -> ``int_uniform``)."""
    if "distribution" in spec:
        return str(spec["distribution"])
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return "unknown"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_parameter(name: str, spec: Any, method: str) -> list[str]:
    """Problems with one parameter, each naming it."""
    where = f"parameters.{name}"
    if not P.is_valid_name(name):
        return [f"{where}: maps to no CLI key. " + P.unknown_name_message(name)]
    if not isinstance(spec, Mapping):
        return [f"{where}: must be a mapping such as {{values: [...]}} or {{value: x}}, got {spec!r}"]
    if "parameters" in spec:
        return [f"{where}: nested parameters are not supported; name the dotted key instead (e.g. {name}.some_key)"]
    dist = distribution_of(spec)
    if dist not in DISTRIBUTIONS:
        return [f"{where}: unknown distribution {dist!r} (choose from {', '.join(DISTRIBUTIONS)})"]
    required, optional = DISTRIBUTIONS[dist]
    problems = []
    if missing := required - set(spec):
        problems.append(f"{where}: distribution {dist} needs {', '.join(sorted(missing))}")
    if extra := set(spec) - required - optional - {"distribution"}:
        problems.append(f"{where}: keys {', '.join(sorted(extra))} do not belong to distribution {dist}")
    if problems:
        return problems

    key = P.target_key_or_none(name) or name
    kind = SWEEP_ONLY_KINDS.get(name) or key_kind(key)
    if method == "grid" and dist not in GRID_DISTRIBUTIONS:
        problems.append(f"{where}: grid search cannot use the continuous distribution {dist}; "
                        "list the points with `values:` or use method random/bayes with run_cap")
    if method == "grid" and dist == "categorical_w_probabilities":
        problems.append(f"{where}: grid search does not accept probabilities")

    if "min" in spec and "max" in spec:
        lo, hi = spec["min"], spec["max"]
        if not (_is_number(lo) and _is_number(hi)):
            return [*problems, f"{where}: min and max must be numbers, got {lo!r} and {hi!r}"]
        if lo >= hi:
            problems.append(f"{where}: min ({lo}) must be below max ({hi})")
        if dist.endswith("log_uniform_values") and lo <= 0:
            problems.append(f"{where}: {dist} needs min > 0 (its bounds are values), got {lo}")
        if dist in ("log_uniform", "q_log_uniform", "inv_log_uniform") and 0 < lo < 1 and 0 < hi <= 1:
            problems.append(f"{where}: {dist} takes natural-log exponents, so min={lo}, max={hi} samples "
                            f"exp({lo})..exp({hi}) = {math.exp(lo):.3g}..{math.exp(hi):.3g}; "
                            f"for values between {lo} and {hi} use `distribution: {dist}_values`")
        implicit_int = "distribution" not in spec and dist == "int_uniform"
        if implicit_int and (lo, hi) == (0, 1) and kind not in ("int", "float"):
            warnings.warn(f"{where}: {{min: 0, max: 1}} without a distribution is int_uniform (0 or 1 only); write "
                          "0.0 and 1.0 (or `distribution: uniform`) for a fraction", SweepSpecWarning, stacklevel=4)
        if implicit_int and kind == "float":
            problems.append(f"{where}: {{min: {lo}, max: {hi}}} without a distribution is read by W&B as int_uniform "
                            f"(whole numbers only) but {key} is a float; write min/max as floats ({float(lo)}, "
                            f"{float(hi)}) or set `distribution: uniform`")
    if kind == "int" and dist not in ("constant", "categorical", "categorical_w_probabilities"):
        integral_q = dist.startswith("q_") and float(spec.get("q", PARAM_DEFAULTS["q"])).is_integer()
        if dist not in INTEGRAL_DISTRIBUTIONS and not integral_q:
            problems.append(f"{where}: {key} takes integers but {dist} draws fractions; use `values:`, "
                            "int_uniform, or a q_ distribution with an integral q")
    problems += _check_values(name, where, key, kind, spec, dist)
    return problems


def _check_values(name: str, where: str, key: str, kind: P.Kind, spec: Mapping[str, Any], dist: str) -> list[str]:
    if dist == "constant":
        values = [spec["value"]]
    elif dist.startswith("categorical"):
        values = spec["values"]
        if not isinstance(values, list) or not values:
            return [f"{where}: values must be a non-empty list"]
        if dist == "categorical_w_probabilities":
            probs = spec["probabilities"]
            if not isinstance(probs, list) or len(probs) != len(values):
                return [f"{where}: probabilities must be a list as long as values"]
            if any(not _is_number(p) or p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
                return [f"{where}: probabilities must be non-negative and sum to 1, got {probs}"]
    else:
        return []
    problems = []
    for value in values:
        if kind == "int" and value is not None and not (_is_number(value) and float(value).is_integer()):
            problems.append(f"{where}: {key} takes integers, got {value!r}")
        elif kind == "bool" and not isinstance(value, bool):
            problems.append(f"{where}: {name} takes true or false, got {value!r}")
        elif name == P.PRESET_PARAM and value not in P.PRESETS:
            problems.append(f"{where}: unknown preset {value!r} (choose from {', '.join(P.PRESETS)})")
        elif name != P.PRESET_PARAM and name not in P.DERIVED:
            try:
                P.map_value(name, value)
            except P.SweepParamError as err:
                problems.append(f"{where}: {err}")
    return problems


def _check_command(config: Mapping[str, Any]) -> list[str]:
    command = config.get("command")
    if command is None:
        return ["command: missing; W&B's default `${env} ${interpreter} ${program} ${args}` has no subcommand. "
                "Write a block list: - ${env} / - ${interpreter} / - ${program} / - fit / - --config / "
                "- configs/<model>.yaml / - ${args}"]
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        return [f"command: must be a YAML block list of strings (one argument per `- item`), got {command!r}"]
    items = [str(c) for c in command]
    problems = []
    program_at = next((i for i, c in enumerate(items) if c == "${program}" or c.endswith("main.py")), None)
    if program_at is None:
        return ["command: must run main.py (an item `${program}` with `program: main.py`, or `main.py`)"]
    if items[program_at] == "${program}":
        program = config.get("program")
        if not program:
            problems.append("command: uses ${program} but `program:` is not set (set `program: main.py`)")
        elif not str(program).endswith("main.py"):
            problems.append(f"program: {program!r} is not dsum's main.py")
    rest = items[program_at + 1:]
    if not rest or rest[0] not in P.SUBCOMMANDS:
        problems.append(f"command: the item after the program must be a subcommand ({', '.join(P.SUBCOMMANDS)}), "
                        f"got {rest[0] if rest else 'nothing'!r}")
    for item in items:
        if item in UNUSABLE_MACROS:
            problems.append(f"command: {item} {UNUSABLE_MACROS[item]}, which LightningCLI cannot parse; use ${{args}}")
        elif len(item.split()) > 1 and (item.split()[0] in P.SUBCOMMANDS or (
                item.startswith("--") and "=" not in item.split()[0])):
            problems.append(f"command: {item!r} holds several arguments; give each its own `- item`")
    literal = [c for c in rest if not (c.startswith("${") and c.endswith("}"))]
    try:
        natives, _ = P.split_argv(literal, source="command")
    except P.SweepParamError as err:
        return [*problems, f"command: {err}"]
    configs = [natives[i + 1] for i, a in enumerate(natives[:-1]) if a in ("--config", "-c")]
    configs += [a.partition("=")[2] for a in natives if a.partition("=")[0] in ("--config", "-c") and "=" in a]
    for path in configs:
        if P.resolve_config_path(path) is None:
            problems.append(f"command: config file {path} not found (from the current directory or {P.REPO_ROOT})")
    return problems


def validate_sweep(config: Mapping[str, Any], path: str | Path | None = None) -> None:
    """Check a sweep config (``path``: its file, named in messages). Raises one :class:`SweepSpecError` listing,
    by key or parameter, every problem that W&B would refuse or that would stop a trial; warns
    (:class:`SweepSpecWarning`) about random/bayes without ``run_cap``, which runs until stopped."""
    label = str(path) if path is not None else "sweep config"
    if not isinstance(config, Mapping):
        raise SweepSpecError(f"{label}: a sweep config must be a mapping")
    problems: list[str] = []
    for key in config:
        if key == "constraints":
            problems.append("constraints: not part of W&B's sweep schema (W&B rejects the whole config). dsum enforces "
                            "the original length constraints itself (dsum.sweep.mapping: encoder_max_len > 512 caps "
                            "the train batch at 16, > 1024 at 8 with accumulation >= 2): delete this key")
        elif key not in TOP_LEVEL_KEYS:
            problems.append(f"{key}: unknown top-level key (W&B allows {', '.join(sorted(TOP_LEVEL_KEYS))})")

    method = config.get("method")
    if method not in METHODS:
        problems.append(f"method: must be one of {', '.join(METHODS)}, got {method!r}")

    metric = config.get("metric")
    if metric is None:
        if method == "bayes":
            problems.append("metric: bayes search needs a metric (e.g. {name: val/rouge_mean, goal: maximize})")
        if config.get("early_terminate"):
            problems.append("metric: early_terminate needs a metric")
    elif not isinstance(metric, Mapping) or "name" not in metric:
        problems.append("metric: must be a mapping with a name, e.g. {name: val/rouge_mean, goal: maximize}")
    else:
        problems += _check_metric(metric)

    if "run_cap" in config and (not isinstance(config["run_cap"], int) or isinstance(config["run_cap"], bool)
                                or config["run_cap"] <= 0):
        problems.append(f"run_cap: must be a positive integer, got {config['run_cap']!r}")
    problems += _check_early_terminate(config.get("early_terminate"))

    parameters = config.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        problems.append("parameters: must be a non-empty mapping of parameter name -> spec")
    else:
        problems += _check_parameter_set(parameters, str(method))
    problems += _check_command(config)

    if problems:
        raise SweepSpecError(f"{label}: invalid sweep config:\n" + "\n".join(f"  - {p}" for p in problems))
    if method in ("random", "bayes") and "run_cap" not in config:
        warnings.warn(f"{label}: method {method} without run_cap runs until stopped; set run_cap or pass --count",
                      SweepSpecWarning, stacklevel=2)


def _check_metric(metric: Mapping[str, Any]) -> list[str]:
    problems = []
    if extra := set(metric) - METRIC_KEYS:
        problems.append(f"metric: unknown keys {', '.join(sorted(extra))}")
    name = metric["name"]
    if name not in LOGGED_METRICS:
        problems.append(f"metric.name: {name!r} is never logged; choose from {', '.join(LOGGED_METRICS)}")
    goal = metric.get("goal")
    if goal is None:
        problems.append("metric.goal: missing (W&B then minimizes); set maximize or minimize")
    elif goal not in METRIC_GOALS:
        problems.append(f"metric.goal: must be maximize or minimize, got {goal!r}")
    elif LOGGED_METRICS.get(name) not in (None, goal):
        problems.append(f"metric.goal: {goal} on {name} optimizes the wrong way ({LOGGED_METRICS[name]} it)")
    return problems


def _check_early_terminate(early: Any) -> list[str]:
    if early is None:
        return []
    if not isinstance(early, Mapping) or early.get("type") != "hyperband":
        return ["early_terminate: only {type: hyperband, ...} is supported by W&B"]
    problems = []
    if extra := set(early) - EARLY_TERMINATE_KEYS:
        problems.append(f"early_terminate: unknown keys {', '.join(sorted(extra))}")
    if "min_iter" not in early and not {"max_iter", "s"} <= set(early):
        problems.append("early_terminate: hyperband needs min_iter, or max_iter and s")
    if "min_iter" in early and (not isinstance(early["min_iter"], int) or early["min_iter"] < 1):
        problems.append(f"early_terminate.min_iter: must be an integer >= 1, got {early['min_iter']!r}")
    if "eta" in early and (not _is_number(early["eta"]) or early["eta"] <= 1):
        problems.append(f"early_terminate.eta: must be > 1, got {early['eta']!r}")
    return problems


def _check_parameter_set(parameters: Mapping[str, Any], method: str) -> list[str]:
    problems = []
    keys: dict[str, str] = {}
    for name, spec in parameters.items():
        name = str(name)
        found = _check_parameter(name, spec, method)
        problems += found
        if found or name == P.PRESET_PARAM:
            continue
        key = P.target_key_or_none(name) or name
        if key in keys:
            problems.append(f"parameters.{name}: sets {key}, as parameters.{keys[key]} does: keep one")
        keys[key] = name
    if P.EFFECTIVE_BATCH in keys and "trainer.accumulate_grad_batches" in keys:
        problems.append(f"parameters.{P.EFFECTIVE_BATCH}: derives trainer.accumulate_grad_batches, which "
                        f"parameters.{keys['trainer.accumulate_grad_batches']} also sets: keep one")
    return problems


def quantize(value: float, q: float) -> float:
    """``value`` rounded to a multiple of ``q``: W&B's rule, a grid anchored at 0, not at min."""
    return round(value / q) * q


def _sample_one(spec: Mapping[str, Any], rng: random.Random) -> Any:
    dist = distribution_of(spec)
    if dist.startswith("q_") and dist in DISTRIBUTIONS:  # the q-less distribution's draw, quantised
        return quantize(_sample_one({**spec, "distribution": dist[2:]}, rng), spec.get("q", PARAM_DEFAULTS["q"]))
    lo, hi = spec.get("min"), spec.get("max")
    mu, sigma, a, b = (spec.get(k, PARAM_DEFAULTS[k]) for k in ("mu", "sigma", "a", "b"))
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        return rng.choice(spec["values"])
    if dist == "categorical_w_probabilities":
        return rng.choices(spec["values"], weights=spec["probabilities"])[0]
    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform":
        return math.exp(rng.uniform(lo, hi))
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "inv_log_uniform":
        return math.exp(-rng.uniform(lo, hi))
    if dist == "inv_log_uniform_values":
        return 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo)))
    if dist == "normal":
        return rng.gauss(mu, sigma)
    if dist == "log_normal":
        return math.exp(rng.gauss(mu, sigma))
    if dist == "beta":
        return rng.betavariate(a, b)
    raise SweepSpecError(f"cannot sample distribution {dist!r}")


def sample_params(config: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """One value per parameter of ``config``, drawn from ``rng`` as W&B's random search would (floats stay
    floats, as W&B sends them)."""
    parameters = config.get("parameters") or {}
    return {str(name): _sample_one(spec, rng) for name, spec in parameters.items()}
