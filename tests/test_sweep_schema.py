"""dsum's copies of W&B's sweep config schema (``dsum.sweep.spec``) checked against W&B's own ``schema.json``.

dsum keeps copies because the ``sweeps`` package pins ``numpy<2``; the fixture is that package's
``config/schema.json`` verbatim (sweeps 0.3.0, MIT: see ``tests/fixtures/README.md``).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from dsum.sweep import search_space, spec
from dsum.sweep.pruning import WandbHyperbandPruner

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "tests" / "fixtures" / "wandb_sweep_schema.json").read_text(encoding="utf-8"))
DEFINITIONS = SCHEMA["definitions"]
# W&B's methods dsum does not run: `custom` is for an external controller (and multi-objective `metrics`).
METHODS_LEFT_OUT = {"custom"}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its ``$ref`` (``#/definitions/<name>``) followed."""
    ref = node.get("$ref")
    return DEFINITIONS[ref.rpartition("/")[2]] if ref else node


def schema_parameter_variants() -> list[dict[str, Any]]:
    """Every way W&B's schema allows a parameter to be written, with a ``distribution`` (not nested parameters)."""
    variants = []
    for ref in DEFINITIONS["parameter"]["anyOf"]:
        definition = resolve(ref)
        variants += [v for v in definition.get("anyOf", [definition]) if "distribution" in v["properties"]]
    return variants


def schema_distributions() -> dict[str, set[tuple[frozenset[str], frozenset[str]]]]:
    """Distribution name -> its (required keys, optional keys) in each variant, ``distribution`` left out."""
    found: dict[str, set[tuple[frozenset[str], frozenset[str]]]] = {}
    for variant in schema_parameter_variants():
        [name] = variant["properties"]["distribution"]["enum"]
        keys = set(variant["properties"]) - {"distribution"}
        required = set(variant.get("required", [])) - {"distribution"}
        found.setdefault(name, set()).add((frozenset(required), frozenset(keys - required)))
    return found


def test_top_level_keys_are_the_schemas() -> None:
    assert spec.TOP_LEVEL_KEYS == set(SCHEMA["properties"])
    assert set(SCHEMA["required"]) <= spec.TOP_LEVEL_KEYS


def test_methods_are_the_schemas_less_the_ones_dsum_leaves_out() -> None:
    schema_methods = set(SCHEMA["properties"]["method"]["enum"])
    assert METHODS_LEFT_OUT <= schema_methods
    assert set(spec.METHODS) == schema_methods - METHODS_LEFT_OUT


def test_metric_keys_and_goals_are_the_schemas() -> None:
    metric = resolve(SCHEMA["properties"]["metric"])
    assert spec.METRIC_KEYS == set(metric["properties"])
    assert metric["required"] == ["name"]
    assert set(spec.METRIC_GOALS) == set(metric["properties"]["goal"]["enum"])
    assert metric["properties"]["goal"]["default"] == "minimize"  # what spec's "metric.goal: missing" says
    assert resolve(SCHEMA["properties"]["metrics"]["items"]) is metric


def test_distributions_and_their_keys_are_the_schemas() -> None:
    schema = schema_distributions()
    assert all(len(forms) == 1 for forms in schema.values()), schema  # the uniform variants agree
    assert spec.DISTRIBUTIONS == {name: forms.pop() for name, forms in schema.items()}


def test_distributions_w_b_infers_are_the_ones_distribution_of_infers() -> None:
    """Variants with a default ``distribution`` may leave it out; ``distribution_of`` must infer the same one."""
    examples = {"value": 1, "values": [1, 2], "probabilities": [0.5, 0.5], "min": 1, "max": 2}
    for variant in schema_parameter_variants():
        default = variant["properties"]["distribution"].get("default")
        if default is None:
            continue
        written = {k: examples[k] for k in variant["required"]}
        for bound in ("min", "max"):  # `format: float` marks the variants written with floats
            if variant["properties"].get(bound, {}).get("format") == "float":
                written[bound] += 0.5
        assert spec.distribution_of(written) == default, written


def test_optional_key_defaults_are_the_schemas() -> None:
    for variant in schema_parameter_variants():
        for key, prop in variant["properties"].items():
            if key != "distribution" and "default" in prop:
                assert spec.PARAM_DEFAULTS[key] == prop["default"], (variant["properties"]["distribution"], key)


def test_every_schema_distribution_validates_and_samples() -> None:
    values = {"value": 1, "values": [1, 2], "probabilities": [0.5, 0.5], "min": 1.0, "max": 2.0, "q": 0.5,
              "mu": 0.0, "sigma": 1.0, "a": 2.0, "b": 2.0}
    config = copy.deepcopy(spec.load_sweep(REPO / "sweeps" / "quick.yaml"))
    config.update(method="random", run_cap=5)
    for name, ((required, optional),) in schema_distributions().items():
        config["parameters"] = {"length_penalty": {"distribution": name, **{k: values[k] for k in required | optional}}}
        spec.validate_sweep(config, name)
        spec.sample_params(config, random.Random(0))


def test_grid_bayes_and_integral_subsets_name_schema_distributions() -> None:
    names = set(schema_distributions())
    assert spec.GRID_DISTRIBUTIONS <= names and spec.INTEGRAL_DISTRIBUTIONS <= names
    assert set(search_space.BAYES_FLOATS) | set(search_space.BAYES_OTHERS) <= names


def test_early_terminate_is_the_schemas_hyperband() -> None:
    [option] = SCHEMA["properties"]["early_terminate"]["oneOf"]
    hyperband = resolve(option)
    assert spec.EARLY_TERMINATE_KEYS == set(hyperband["properties"])
    assert hyperband["properties"]["type"]["enum"] == ["hyperband"]
    assert hyperband["properties"]["eta"]["default"] == 3
    eta = hyperband["properties"]["eta"]["default"]
    assert WandbHyperbandPruner({"type": "hyperband", "min_iter": 1}).ratio == 1 / eta


@pytest.mark.parametrize("required", [
    {"max_iter", "s"}, {"min_iter"}, set(), {"max_iter"}, {"s"},
], ids=lambda r: "+".join(sorted(r)) or "none")
def test_early_terminate_needs_what_the_schemas_any_of_needs(required: set[str]) -> None:
    [option] = SCHEMA["properties"]["early_terminate"]["oneOf"]
    accepted = any(set(alternative["required"]) <= required for alternative in resolve(option)["anyOf"])
    config = copy.deepcopy(spec.load_sweep(REPO / "sweeps" / "quick.yaml"))
    config["early_terminate"] = {"type": "hyperband", **{key: 3 for key in required}}
    if accepted:
        spec.validate_sweep(config)
    else:
        with pytest.raises(spec.SweepSpecError, match="early_terminate: hyperband needs min_iter, or max_iter and s"):
            spec.validate_sweep(config)


def test_early_terminate_bounds_are_the_schemas() -> None:
    properties = resolve(SCHEMA["properties"]["early_terminate"]["oneOf"][0])["properties"]
    config = copy.deepcopy(spec.load_sweep(REPO / "sweeps" / "quick.yaml"))
    bounds = (("min_iter", properties["min_iter"]["minimum"] - 1), ("eta", properties["eta"]["exclusiveMinimum"]))
    for key, bad in bounds:
        config["early_terminate"] = {"type": "hyperband", "min_iter": 1, key: bad}
        with pytest.raises(spec.SweepSpecError, match=f"early_terminate.{key}: must be"):
            spec.validate_sweep(config)
