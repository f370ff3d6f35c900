"""Early termination for local (Optuna) sweeps: W&B's hyperband rule, and the trial side that reports to it.

A local sweep's trial (its own ``main.py`` process) learns from its environment where the study lives
(:data:`STORAGE_ENV`, :data:`STUDY_ENV`, :data:`TRIAL_ENV`), which metric to report (:data:`METRIC_ENV`) and
the sweep's ``early_terminate`` block (:data:`PRUNER_ENV`). :class:`OptunaPruning` reports the metric after
every validation (step = validations so far, as W&B counts) and stops training when the study prunes the trial.

:class:`WandbHyperbandPruner` is W&B's own rule (``sweeps.hyperband_stopping``), not an approximation: bands at
``min_iter * eta**k`` (or ``max_iter / eta**i``, ``i = 1..s``); at the highest band a trial has reached, it is
stopped when its value there (its best so far with ``strict: false``) is worse than the ``1/eta`` quantile of
every trial's value at that band. Optuna's Hyperband/SuccessiveHalving pruners would stop different trials.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from dsum.constants import MONITOR
from dsum.callbacks.record import request_stop

if TYPE_CHECKING:  # optuna is imported only by sweeps and their trials
    import optuna

STORAGE_ENV = "DSUM_OPTUNA_STORAGE"
STUDY_ENV = "DSUM_OPTUNA_STUDY"
TRIAL_ENV = "DSUM_OPTUNA_TRIAL"
METRIC_ENV = "DSUM_OPTUNA_METRIC"
PRUNER_ENV = "DSUM_OPTUNA_PRUNER"
SQLITE_TIMEOUT_SECONDS = 60


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url``: a database URL (``sqlite:///...``, ``postgresql://...``, anything
    SQLAlchemy opens), else a journal file path (safe for many processes on one machine)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in url:
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(url))


def hyperband_bands(early_terminate: Mapping[str, Any]) -> list[int]:
    """The validation counts at which W&B's hyperband judges a run (ValueError if none, or no band >= 1)."""
    eta = early_terminate.get("eta", 3)
    bands = []
    if "max_iter" in early_terminate:
        band = float(early_terminate["max_iter"])
        for _ in range(int(early_terminate.get("s", 0))):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        bands.sort()
    elif "min_iter" in early_terminate:
        band = float(early_terminate["min_iter"])
        for _ in range(100):
            bands.append(int(band))
            band *= eta
    else:
        raise ValueError("early_terminate: hyperband needs min_iter, or max_iter and s")
    if not bands:
        raise ValueError(f"early_terminate: {dict(early_terminate)} gives no band >= 1; raise s or max_iter, "
                         "or lower eta")
    return bands


def _history(trial: optuna.trial.FrozenTrial, sign: float) -> list[float]:
    """A trial's reported values in step order, as a minimisation (W&B skips invalid values)."""
    return [sign * v for _, v in sorted(trial.intermediate_values.items()) if v is not None and math.isfinite(v)]


class WandbHyperbandPruner:
    """W&B's hyperband early termination as an Optuna pruner, from a sweep YAML's ``early_terminate`` block:
    ``min_iter`` or ``max_iter`` + ``s``, ``eta`` (default 3), ``strict`` (default true, as W&B fills it in: a run is
    judged by its value at the band, not its best so far)."""

    def __init__(self, early_terminate: Mapping[str, Any]) -> None:
        self.bands = hyperband_bands(early_terminate)
        self.ratio = 1.0 / float(early_terminate.get("eta", 3))
        self.strict = early_terminate.get("strict", True) is True

    def thresholds(self, histories: list[list[float]]) -> list[float]:
        """Per band, the value a run must not exceed (minimisation), from every run's history."""
        out = []
        for band in self.bands:
            values = sorted(h[band - 1] for h in histories if len(h) >= band)
            out.append(values[int(self.ratio * len(values))] if values else math.inf)
        return out

    def should_stop(self, history: list[float], histories: list[list[float]]) -> bool:
        """Whether a running trial with ``history`` (minimisation) is stopped, given every run's history."""
        closest = None
        for band, threshold in zip(self.bands, self.thresholds(histories), strict=True):
            if band > len(history):
                break
            closest = (band, threshold)
        if closest is None:
            return False
        band, threshold = closest
        value = history[band - 1] if self.strict else min(history)
        return value > threshold

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        from optuna.study import StudyDirection

        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        histories = [h for t in study.get_trials(deepcopy=False) if (h := _history(t, sign))]
        return self.should_stop(_history(trial, sign), histories)


def make_pruner(early_terminate: Mapping[str, Any] | None) -> Any:
    """The pruner for a sweep's ``early_terminate`` block (Optuna's NopPruner when there is none)."""
    import optuna

    if not early_terminate:
        return optuna.pruners.NopPruner()
    if early_terminate.get("type") != "hyperband":
        raise ValueError(f"early_terminate: only type hyperband is supported, got {early_terminate.get('type')!r}")

    optuna.pruners.BasePruner.register(WandbHyperbandPruner)  # (isinstance checks hold; Optuna only calls `prune`)
    return WandbHyperbandPruner(early_terminate)


class OptunaPruning(L.Callback):
    """Reports a local sweep trial's metric to its Optuna study after each validation and stops the run
    (status ``pruned``) when the study's pruner says so. Rank 0 decides; the decision is broadcast.

    Args:
        storage: Optuna storage URL or journal file.
        study: Study name.
        trial: Trial number in the study.
        metric: The logged metric to report, e.g. ``val/rouge_mean``.
        early_terminate: The sweep's ``early_terminate`` block, or None to report without pruning.
    """

    def __init__(self, storage: str, study: str, trial: int, metric: str,
                 early_terminate: Mapping[str, Any] | None = None) -> None:
        self.storage, self.study_name, self.trial_number = storage, study, trial
        self.metric = metric
        self.early_terminate = dict(early_terminate) if early_terminate else None
        self.validations = 0
        self._trial: optuna.trial.Trial | None = None
        self._disabled = False
        self._missing_warned = False

    def _optuna_trial(self) -> optuna.trial.Trial:
        if self._trial is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = open_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage,
                                      pruner=make_pruner(self.early_terminate))
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(self.study_name), self.trial_number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def _report(self, trainer: L.Trainer) -> bool:
        """Report this validation's metric; whether the study prunes the trial (rank 0 only)."""
        if self._disabled:
            return False
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            if not self._missing_warned:
                rank_zero_warn(f"dsum: the sweep's metric {self.metric} is not logged (validation "
                               f"{self.validations}); nothing is reported to the sweep's study")
                self._missing_warned = True
            return False
        value = float(value)
        if not math.isfinite(value):
            return False  # W&B's hyperband skips invalid values too
        try:
            trial = self._optuna_trial()
            trial.report(value, self.validations)
            return bool(self.early_terminate) and trial.should_prune()
        except Exception as error:  # the sweep's bookkeeping must never kill the training run
            self._disabled = True
            rank_zero_warn(f"dsum: cannot report to the sweep's study ({type(error).__name__}: {error}); "
                           "this trial goes on without early termination")
            return False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        prune = self._report(trainer) if trainer.is_global_zero else False
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune and trainer.state.fn == TrainerFn.FITTING:  # a `validate` run has nothing to stop
            rank_zero_info(f"dsum: trial {self.trial_number} pruned after validation {self.validations} "
                           f"({self.metric} = {float(trainer.callback_metrics[self.metric]):.4g})")
            request_stop(trainer, "pruned")

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))


def pruning_callbacks(environ: Mapping[str, str] | None = None) -> list[L.Callback]:
    """``[OptunaPruning(...)]`` for a local sweep's trial (its ``DSUM_OPTUNA_*`` variables are set), else ``[]``."""
    env = os.environ if environ is None else environ
    if not all(env.get(k) for k in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV)):
        return []
    return [OptunaPruning(storage=env[STORAGE_ENV], study=env[STUDY_ENV], trial=int(env[TRIAL_ENV]),
                          metric=env.get(METRIC_ENV) or MONITOR,
                          early_terminate=json.loads(env.get(PRUNER_ENV) or "null"))]
