"""dsum's hyperband port (:mod:`dsum.sweep.pruning`) against W&B's own ``sweeps.hyperband_stopping`` (0.3.0).

``tests/fixtures/hyperband_cases.json`` holds early-termination cases and what W&B's ``hyperband_stop_runs``
returned for them (bands, thresholds, runs stopped): its docstring example, the inputs of wandb/sweeps'
``tests/test_hyperband_stopping.py`` and seeded random cases (``tests/fixtures/make_hyperband_cases.py`` made
it; the ``sweeps`` package is not a dependency). dsum sees each case as an Optuna study, as a local sweep does.
"""

from __future__ import annotations

import json
import math
from numbers import Number
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from dsum.sweep.pruning import WandbHyperbandPruner, hyperband_bands

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "hyperband_cases.json"
CASES = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
BY_NAME = {case["name"]: case for case in CASES}
# What W&B's schema fills in before its rule runs (``strict``'s default is true there).
WANDB_DEFAULTS = {"eta": 3, "strict": True}


def is_number(value: Any) -> bool:
    """W&B's ``is_number``: a finite number, not a bool (anything else is left out of a history)."""
    return isinstance(value, Number) and not isinstance(value, bool) and math.isfinite(value)


def study_of(case: dict[str, Any]) -> tuple[optuna.Study, list[optuna.trial.FrozenTrial]]:
    """The case's runs as trials of an in-memory study (reports at steps 1, 2, ...; non-numbers as NaN)."""
    direction = "maximize" if case["metric"]["goal"] == "maximize" else "minimize"
    study = optuna.create_study(direction=direction)
    for run in case["runs"]:
        values = {step: float(v) if is_number(v) else math.nan for step, v in enumerate(run["history"], start=1)}
        state = TrialState.RUNNING if run["state"] == "running" else TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=state, value=None if state == TrialState.RUNNING else 0.0, intermediate_values=values,
            user_attrs={"name": run["name"]}))
    return study, study.get_trials(deepcopy=False)


def stopped_by_dsum(case: dict[str, Any], early_terminate: dict[str, Any]) -> list[str]:
    pruner = WandbHyperbandPruner(early_terminate)
    study, trials = study_of(case)
    return [t.user_attrs["name"] for t in trials if t.state == TrialState.RUNNING and pruner.prune(study, t)]


def minimization(case: dict[str, Any]) -> list[list[float]]:
    """Every run's history as W&B compares them (valid values, negated when maximizing), empty ones left out."""
    sign = -1.0 if case["metric"]["goal"] == "maximize" else 1.0
    histories = [[sign * v for v in run["history"] if is_number(v)] for run in case["runs"]]
    return [h for h in histories if h]


@pytest.fixture(autouse=True, scope="module")
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_docstring_example_stops_run_b() -> None:
    """``hyperband_stop_runs``' docstring: bands 1 and 2 (max_iter 5, eta 2, s 2); only b is stopped."""
    case = BY_NAME["docstring"]
    assert case["bands"] == [1, 2] and case["thresholds"] == [10, 8] and case["stopped"] == ["b"]
    assert hyperband_bands(case["early_terminate"]) == [1, 2]
    assert stopped_by_dsum(case, {**WANDB_DEFAULTS, **case["early_terminate"]}) == ["b"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_same_bands_thresholds_and_stops_as_wandb(case: dict[str, Any]) -> None:
    early_terminate = {**WANDB_DEFAULTS, **case["early_terminate"]}
    bands = hyperband_bands(early_terminate)
    assert bands[:len(case["bands"])] == case["bands"]
    thresholds = WandbHyperbandPruner(early_terminate).thresholds(minimization(case))
    assert thresholds[:len(case["thresholds"])] == [math.inf if t is None else t for t in case["thresholds"]]
    assert stopped_by_dsum(case, early_terminate) == case["stopped"]


def test_a_block_without_strict_stops_what_wandb_stops() -> None:
    cases = [case for case in CASES if "strict" not in case["early_terminate"]]
    assert [stopped_by_dsum(c, c["early_terminate"]) for c in cases] == [c["stopped"] for c in cases]


def test_the_conservative_rule_is_what_strict_false_stops() -> None:
    """With ``strict: false`` written out, dsum and W&B agree: the runs W&B's default stops survive."""
    for name in ("eta_3", "eta_3_max", "2runs_band1_pass"):
        case = BY_NAME[f"{name}_strict_False"]
        assert case["stopped"] == [] != BY_NAME[name]["stopped"]
        assert stopped_by_dsum(case, case["early_terminate"]) == []
