"""Offline sweep reports from the run records under ``<sweep_dir>/runs/``: a PNG of the metric over trials and
against each swept parameter, and a Markdown table of the top runs.

Figures are drawn on matplotlib's Agg canvas without pyplot (no display needed), with ASCII labels only: the
default font has no Hangul glyphs. The Markdown keeps values as they are.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsum.constants import MONITOR
from dsum.infra.files import atomic_open, atomic_write_text, read_json
from dsum.infra.secrets import redact_text
from dsum.registry import Goal, beats
from dsum.sweep.summary import collect_trials

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_GOAL: Goal = "maximize"
COMPLETED = "completed"
# A positive numeric parameter spanning at least this ratio (max/min) is drawn on a log axis.
LOG_SCALE_RATIO = 10.0
MAX_LABEL_CHARS = 24
PANEL_COLUMNS = 4


def write_report(sweep_dir: str | Path, top: int = 10, sweep_id: str | None = None) -> list[Path]:
    """Write a PNG and a Markdown report (:func:`plot_report`, :func:`markdown_report`) of a sweep's output
    directory, e.g. ``outputs/sweep_quick``, offline; returns the files written (PNG then Markdown, per sweep).

    A directory of one sweep gets ``report.png`` / ``report.md``; with ``sweep_id`` (that sweep's trials only), or
    for each of several sweeps, a ``report_<sweep_id>.*`` pair. ``top``: rows in the table. The metric and goal come
    from :func:`sweep_metric`; only completed trials count towards the best, as in ``summarize``.

    Raises:
        FileNotFoundError: ``sweep_dir`` does not exist or holds no trial records.
        ValueError: ``sweep_id`` has no trials there, ``top`` < 1, or a summary JSON is unreadable.
    """
    sweep_dir = Path(sweep_dir)
    if top < 1:
        raise ValueError(f"top={top}: the Markdown table needs at least 1 row")
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"{sweep_dir}: no such directory; pass a sweep's output directory, e.g. outputs/sweep_quick")
    groups = group_trials(sweep_dir, sweep_id)
    written: list[Path] = []
    for group_id, trials in groups.items():
        metric, goal = sweep_metric(sweep_dir, group_id)
        stem = "report" if sweep_id is None and len(groups) == 1 else f"report_{_file_safe(group_id)}"
        png, md = sweep_dir / f"{stem}.png", sweep_dir / f"{stem}.md"
        with atomic_open(png, "wb") as handle:  # a reader never sees half an image
            plot_report(trials, metric, goal, group_id).savefig(handle, format="png")
        atomic_write_text(md, markdown_report(trials, metric, goal, group_id, top, image=png.name))
        written += [png, md]
    return written


def group_trials(sweep_dir: Path, sweep_id: str | None = None) -> dict[str | None, list[dict[str, Any]]]:
    """Trials by sweep id, each group in start order: with ``sweep_id``, that sweep's trials and (as in
    ``summarize``) those that recorded none; else one group per sweep id, trials with none joining the only
    sweep, or forming their own group (key None) when there are several."""
    trials = collect_trials(sweep_dir)
    if not trials:
        raise FileNotFoundError(
            f"{sweep_dir}: no trial records under {sweep_dir / 'runs'}/*/ (run.json or validate.json); "
            "run the sweep first, or pass its output directory, e.g. outputs/sweep_quick")
    ids = sorted({t["sweep_id"] for t in trials} - {None})
    if sweep_id is not None:
        chosen = [t for t in trials if t["sweep_id"] in (sweep_id, None)]
        if not any(t["sweep_id"] == sweep_id for t in chosen):
            raise ValueError(f"{sweep_dir}: no trials of sweep {sweep_id!r}; "
                             f"sweeps with trials here: {', '.join(ids) or 'none recorded'}")
        return {sweep_id: start_order(chosen)}
    if len(ids) <= 1:
        return {(ids or [None])[0]: start_order(trials)}
    groups = {group_id: [t for t in trials if t["sweep_id"] == group_id] for group_id in [*ids, None]}
    return {group_id: start_order(members) for group_id, members in groups.items() if members}


def start_order(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials by ``started_at`` (time zones honoured); trials without a parseable time go last."""
    def key(trial: dict[str, Any]) -> tuple[int, float, str]:
        started = _timestamp(trial.get("started_at"))
        return (started is None, started or 0.0, str(trial["run_id"]))

    return sorted(trials, key=key)


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):  # not text, or not a time
        return None


def metric_value(trial: dict[str, Any]) -> float | None:
    """The trial's metric as a finite float, or None (missing, NaN from a diverged run, not a number)."""
    value = trial.get("metric")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def ranked(trials: list[dict[str, Any]], goal: Goal) -> list[tuple[int | None, dict[str, Any]]]:
    """(rank, trial): completed trials with a metric, best first, ranked 1..; then the rest, unranked
    (those with a metric best first, then those without), so a partial metric never outranks a finished run."""
    sign = -1.0 if goal == "maximize" else 1.0
    rankable = [t for t in trials if t["state"] == COMPLETED and metric_value(t) is not None]
    rest = [t for t in trials if not any(t is r for r in rankable)]
    # sorted() is stable: ties keep start order.
    rankable.sort(key=lambda t: sign * metric_value(t))
    rest.sort(key=lambda t: (metric_value(t) is None, sign * (metric_value(t) or 0.0)))
    return [(i, t) for i, t in enumerate(rankable, 1)] + [(None, t) for t in rest]


def best_so_far(trials: list[dict[str, Any]], goal: Goal) -> list[float | None]:
    """Per trial (in the given order), the best completed metric up to and including it."""
    best: float | None = None
    curve = []
    for trial in trials:
        value = metric_value(trial)
        if trial["state"] == COMPLETED and value is not None and beats(value, best, goal):
            best = value
        curve.append(best)
    return curve


def param_names(trials: list[dict[str, Any]]) -> list[str]:
    """Every swept parameter, in the order trials first recorded them (the sweep YAML's order)."""
    return list(dict.fromkeys(name for trial in trials for name in trial.get("params") or {}))


def state_counts(trials: list[dict[str, Any]]) -> str:
    """``8 trials: 5 completed, 2 failed, 1 pruned`` (completed first, then by count)."""
    counts = Counter(str(t["state"]) for t in trials)
    order = sorted(counts, key=lambda s: (s != COMPLETED, -counts[s], s))
    return f"{len(trials)} trial{'s' * (len(trials) != 1)}: " + ", ".join(f"{counts[s]} {s}" for s in order)


def sweep_metric(sweep_dir: Path, sweep_id: str | None) -> tuple[str, Goal]:
    """(metric, goal) from ``<sweep_id>_summary.json``, else from the directory's summaries if they agree (those
    without a metric, e.g. ``parallel_*_summary.json``, skipped), else ``val/rouge_mean`` maximized."""
    found: list[tuple[str, Goal]] = []
    for path in sorted(sweep_dir.glob("*_summary.json")):
        try:
            summary = read_json(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable summary ({error}); delete it or rewrite it with "
                             "`python -m dsum.sweep summarize`") from error
        if not isinstance(summary, dict) or not summary.get("metric"):
            continue
        goal = summary.get("goal", DEFAULT_GOAL)
        if goal not in ("maximize", "minimize"):
            raise ValueError(f"{path}: goal {goal!r} is neither 'maximize' nor 'minimize'; fix or delete the file")
        entry = (str(summary["metric"]), goal)
        if sweep_id is not None and (summary.get("sweep_id") == sweep_id or path.name == f"{sweep_id}_summary.json"):
            return entry
        found.append(entry)
    if found and len(set(found)) == 1:
        return found[0]
    return MONITOR, DEFAULT_GOAL


def markdown_report(trials: list[dict[str, Any]], metric: str, goal: Goal, sweep_id: str | None,
                    top: int = 10, image: str | None = None) -> str:
    """The top ``top`` trials as a Markdown table, with counts by state and the best model's path."""
    params = param_names(trials)
    rows = ranked(trials, goal)
    best = rows[0][1] if rows and rows[0][0] == 1 else None
    lines = [f"# Sweep report: {sweep_id or '(no sweep id)'}", "",
             f"Metric: `{metric}` ({goal}). {state_counts(trials)}.", ""]
    if best is not None:
        lines.append(f"Best run: `{best['run_id']}` = {_fmt(metric_value(best))}; "
                     f"model: `{best.get('best_model') or '(none exported)'}`")
    else:
        lines.append("Best run: none (no completed trial has a metric); model: (none)")
    lines.append("")
    if image:
        lines += [f"![metric against each parameter]({image})", ""]
    header = ["rank", "run_id", "state", metric, *params]
    lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
    lines.append("|" + "|".join(["---:", "---", "---", "---:", *["---"] * len(params)]) + "|")
    for rank, trial in rows[:top]:
        trial_params = trial.get("params") or {}
        cells = [str(rank) if rank else "-", trial["run_id"], trial["state"],
                 _fmt(metric_value(trial)) if trial.get("metric") is not None else "",
                 *(_text(trial_params[p]) if p in trial_params else "" for p in params)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if len(rows) > top:
        lines += ["", f"({len(rows) - top} more trial{'s' * (len(rows) - top != 1)} not shown.)"]
    return redact_text("\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.5g}"


def _text(value: Any) -> str:
    """A parameter value as text; dicts and lists as compact JSON."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str, separators=(",", ":"))
    return str(value)


def _cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _ascii(text: str, limit: int | None = None) -> str:
    """Drawable with any font: non-ASCII escaped (``\\uc694``), cut to ``limit`` characters."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _numeric(value: Any) -> float | None:
    """A finite number, also from text such as ``"1e-5"`` (YAML 1.1 reads that as a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _scatter(ax: Axes, xs: list[float], trials: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """Plot trials at ``xs``: ``completed``, ``partial`` (a metric but not completed) and ``missing`` (no metric,
    crosses on the x axis)."""
    groups: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("completed", "partial", "missing")}
    for x, trial in zip(xs, trials):
        style = "missing" if metric_value(trial) is None else "completed" if trial["state"] == COMPLETED else "partial"
        groups[style][0].append(x)
        groups[style][1].append(0.03 if style == "missing" else metric_value(trial))
    if groups["completed"][0]:
        ax.scatter(*groups["completed"], s=36, color="tab:blue", alpha=0.85, zorder=3, label="completed")
    if groups["partial"][0]:
        ax.scatter(*groups["partial"], s=40, facecolors="none", edgecolors="tab:orange", linewidths=1.5,
                   zorder=3, label="pruned/interrupted (partial metric)")
    if groups["missing"][0]:
        # x in data, y in axes fraction: along the bottom whatever the metric's range. Autoscaling
        # ignores points off transData, so their x values are added to the data limits by hand.
        ax.scatter(*groups["missing"], s=44, marker="x", color="grey", zorder=3,
                   transform=ax.get_xaxis_transform(), label="no metric (e.g. failed)", clip_on=False)
        ax.update_datalim([(x, 0.0) for x in groups["missing"][0]], updatey=False)
        ax.autoscale_view()
        if groups["completed"][0] or groups["partial"][0]:
            low, high = ax.get_ylim()
            ax.set_ylim(low - 0.08 * (high - low), high)  # a strip below the lowest metric for the crosses
    for x, trial in zip(xs, trials):
        if trial is best:
            ax.scatter([x], [metric_value(best)], s=220, marker="*", color="gold", edgecolors="black", linewidths=0.8,
                       zorder=4, label="best")


def _param_panel(ax: Axes, name: str, trials: list[dict[str, Any]], metric: str,
                 best: dict[str, Any] | None) -> None:
    present = [t for t in trials if name in (t.get("params") or {})]
    numbers = [_numeric(t["params"][name]) for t in present]
    unset = len(trials) - len(present)
    title = _ascii(name, 40)
    if numbers and all(n is not None for n in numbers):
        xs = [float(n) for n in numbers]  # type: ignore[arg-type]
        low, high = min(xs), max(xs)
        if low > 0 and high / low >= LOG_SCALE_RATIO:
            ax.set_xscale("log")
            title += " (log)"
        _scatter(ax, xs, present, best)
    else:
        # Categories: strings, bools, dicts/lists (as JSON), or a mix; unset values get their own.
        labels = [_ascii(_text(t["params"][name]) if name in (t.get("params") or {}) else "(unset)", MAX_LABEL_CHARS)
                  for t in trials]
        categories = sorted(set(labels), key=lambda c: (c == "(unset)", _numeric(c) is None, _numeric(c) or 0.0, c))
        position = {c: i for i, c in enumerate(categories)}
        counts = Counter(labels)
        seen: Counter[str] = Counter()
        xs = []
        for label in labels:
            # Spread repeated categories evenly so overlapping points stay visible (deterministic).
            n, k = counts[label], seen[label]
            seen[label] += 1
            xs.append(position[label] + (0.0 if n == 1 else -0.2 + 0.4 * k / (n - 1)))
        _scatter(ax, xs, trials, best)
        crowded = len(categories) > 3 or max(map(len, categories)) > 8
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(categories, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
        ax.set_xlim(-0.6, len(categories) - 0.4)
        unset = 0
    if unset:
        title += f" ({unset} unset)"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(_ascii(metric), fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def _progress_panel(ax: Axes, trials: list[dict[str, Any]], metric: str, goal: Goal,
                    best: dict[str, Any] | None) -> None:
    xs = list(range(1, len(trials) + 1))
    _scatter(ax, xs, trials, best)
    points = [(x, y) for x, y in zip(xs, best_so_far(trials, goal)) if y is not None]
    if points:
        if points[-1][0] != xs[-1]:
            points.append((xs[-1], points[-1][1]))
        ax.step(*zip(*points), where="post", color="tab:green", linewidth=2, zorder=2,
                label=f"best so far ({'max' if goal == 'maximize' else 'min'}, completed)")
    ax.set_title("metric over trials (in start order)", fontsize=10)
    ax.set_xlabel("trial", fontsize=9)
    ax.set_ylabel(_ascii(metric), fontsize=9)
    ax.set_xlim(0.5, len(trials) + 0.5)
    if len(trials) <= 30:
        ax.set_xticks(xs)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def plot_report(trials: list[dict[str, Any]], metric: str, goal: Goal, sweep_id: str | None) -> Figure:
    """The report figure: best-so-far over trials on top, then one panel per swept parameter."""
    from matplotlib.figure import Figure  # Agg canvas by default; pyplot (and its backend choice) unused

    params = param_names(trials)
    rows = ranked(trials, goal)
    best = rows[0][1] if rows and rows[0][0] == 1 else None
    columns = max(1, min(PANEL_COLUMNS, len(params)))
    param_rows = math.ceil(len(params) / columns)
    figure = Figure(figsize=(max(12.0, 4.2 * columns), 4.6 + 3.4 * param_rows), dpi=100, layout="constrained")
    grid = figure.add_gridspec(1 + param_rows, columns, height_ratios=[1.2] + [1.0] * param_rows)
    _progress_panel(figure.add_subplot(grid[0, :]), trials, metric, goal, best)
    for i, name in enumerate(params):
        _param_panel(figure.add_subplot(grid[1 + i // columns, i % columns]), name, trials, metric, best)
    headline = f"Sweep {sweep_id or '(no sweep id)'} - {metric} ({goal})"
    detail = state_counts(trials)
    if best is not None:
        detail += f"; best {best['run_id']} = {_fmt(metric_value(best))}"
    figure.suptitle(_ascii(f"{headline}\n{detail}"), fontsize=12)
    return figure


def _file_safe(sweep_id: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sweep_id) if sweep_id else "no_sweep_id"
