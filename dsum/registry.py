"""The model registry: immutable versions per evaluation key, and a ``best`` alias that only ever moves to a winner.

One directory per **evaluation key** (the metric, its settings and the validation data it was scored on)::

    models/registry/<key>/
      key.json        the evaluation key
      v1/ v2/ ...     immutable versions: the exported model (HF format or adapter) + meta.json
      best -> v2      the alias: a relative symlink, swapped atomically (usable as --model.pretrained)
      events.jsonl    every promotion and alias move (an audit trail, not the source of truth)

A model is compared only with those of its own key. Sample-data and ``dsum.tiny`` runs are *sandbox* runs
(:func:`registry_for` sends them to ``models/sandbox``). Promotion is atomic and serialised per key by a file lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from filelock import FileLock

from dsum.infra.files import atomic_write_dir, atomic_write_json, is_complete_dir, read_json
from dsum.infra.log import warn

DEFAULT_REGISTRY = Path("models/registry")
SANDBOX_REGISTRY = Path("models/sandbox")
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "data" / "sample"
TINY_MARKER = "dsum_tiny"  # a config.json attribute that dsum.tiny models (and models fine-tuned from them) carry
BEST = "best"
KEY_FILE = "key.json"
META_FILE = "meta.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".lock"
VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
VERSION_ARG = re.compile(r"^v?([1-9][0-9]*)$")  # what the CLI accepts for a version: v<N> or <N>
Goal = Literal["maximize", "minimize"]

class RegistryError(ValueError):
    """A promotion or alias move the registry refuses (bad value, bad weights, unknown version, key mismatch)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def beats(value: float, incumbent: float | None, goal: Goal) -> bool:
    """Whether ``value`` is strictly better than ``incumbent`` (None: nothing to beat)."""
    return incumbent is None or (value > incumbent if goal == "maximize" else value < incumbent)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --------------------------------------------------------------------------------------------- the key
@dataclass(frozen=True)
class EvaluationKey:
    """How a score was obtained; two scores are comparable only when their keys are equal."""

    metric: str  # the logged metric name (val/rouge_mean)
    goal: Goal
    settings: dict[str, Any]  # the metric's settings (ROUGE tokenizer, reference rule, scale; see dsum.eval.metrics)
    val_sha256: str  # SHA-256 of the validation file's bytes
    val_subset: int | float | None = None  # data.val_subset (None: the whole file)
    val_name: str = field(default="", compare=False)  # the validation file's name, for humans only (not identity)

    def digest(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k != "val_name"}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def slug(self) -> str:
        """The key's directory name, e.g. ``val-rouge_mean__all__3f2a9c1d0b`` (metric, subset, identity hash)."""
        subset = "all" if self.val_subset is None else f"subset{self.val_subset}"
        readable = f"{self.metric}__{subset}"
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', readable).strip('-')}__{self.digest()[:10]}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "digest": self.digest()}


@dataclass(frozen=True)
class RunFacts:
    """What the registry needs to know about a finished run, read from its run record and ``config.yaml``."""

    key: EvaluationKey
    val_file: str
    model_class: str | None
    pretrained: str | None
    sandbox: bool


def _is_tiny(model_dir: str | Path | None) -> bool:
    config = Path(model_dir) / "config.json" if model_dir else None
    data = _read_registry_json(config) if config and config.is_file() else None
    return isinstance(data, dict) and bool(data.get(TINY_MARKER))


def _is_sample(val_sha256: str, val_file: Path) -> bool:
    return SAMPLE_DATA in val_file.resolve().parents or any(
        file_sha256(p) == val_sha256 for p in SAMPLE_DATA.glob("*.csv"))


def run_facts(record: dict[str, Any], metric: str, goal: Goal, run_dir: str | Path | None = None,
              export_dir: str | Path | None = None) -> RunFacts:
    """The evaluation key and model facts of a run (``record``: its ``run.json``; ``run_dir``: default the record's;
    ``export_dir``: checked for the tiny-model marker): the record's ``metric`` settings (else ``{"name": metric}``),
    and ``data.val_file``/``data.val_subset`` of its ``config.yaml``, hashed by the run (``val_data.sha256``) or now.
    A :class:`RegistryError` when the config or the validation file cannot be found.
    """
    run_dir = Path(run_dir or record.get("run_dir") or ".")
    config_path = Path(record.get("config") or run_dir / "config.yaml")
    if not config_path.is_file():
        config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RegistryError(f"{config_path}: the run's config.yaml is missing; cannot tell what data it was scored on")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    data = config.get("data") or {}
    if not data.get("val_file"):
        raise RegistryError(f"{config_path}: data.val_file is not set; a score without validation data is not ranked")
    val_file = Path(data["val_file"])
    # The hash the run itself recorded of the bytes it read wins: the file may have changed since.
    recorded = (record.get("val_data") or {}).get("sha256")
    if recorded is None and not val_file.is_file():
        raise RegistryError(f"{config_path}: data.val_file={val_file} not found (from {Path.cwd()}); "
                            "cannot hash the validation data the run was scored on")
    settings = record.get("metric") if isinstance(record.get("metric"), dict) else {"name": metric}
    key = EvaluationKey(metric=metric, goal=goal, settings=settings, val_sha256=recorded or file_sha256(val_file),
                        val_subset=data.get("val_subset"), val_name=val_file.name)
    model = config.get("model") or {}
    pretrained = (model.get("init_args") or {}).get("pretrained")
    sandbox = _is_sample(key.val_sha256, val_file) or _is_tiny(export_dir) or _is_tiny(pretrained)
    return RunFacts(key=key, val_file=str(val_file), model_class=model.get("class_path"), pretrained=pretrained,
                    sandbox=sandbox)


def registry_for(facts: RunFacts, registry: str | Path = DEFAULT_REGISTRY,
                 sandbox_registry: str | Path = SANDBOX_REGISTRY) -> Path:
    """Where a run promotes: ``sandbox_registry`` for sample-data or tiny-model runs, else ``registry``."""
    return Path(sandbox_registry if facts.sandbox else registry)


# --------------------------------------------------------------------------------------------- checks
def _tensors(path: Path) -> Iterator[tuple[str, Any]]:
    """A weights file's tensors by name, one at a time for safetensors (a shard is never loaded whole)."""
    import torch
    from safetensors import safe_open

    if path.suffix == ".bin":
        yield from torch.load(path, map_location="cpu", weights_only=True).items()
        return
    with safe_open(path, framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            yield name, handle.get_tensor(name)


def check_finite_weights(model_dir: str | Path) -> None:
    """Refuse (:class:`RegistryError`) a model without weights or whose weights hold NaN or infinity."""
    import torch

    model_dir = Path(model_dir)
    files = [*sorted(model_dir.glob("*.safetensors")), *sorted(model_dir.glob("*.bin"))]
    if not files:
        raise RegistryError(f"{model_dir}: no weights (*.safetensors or *.bin) to promote")
    for path in files:
        for name, tensor in _tensors(path):
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise RegistryError(f"{path}: tensor {name!r} holds NaN or infinite values; not promoted")


# --------------------------------------------------------------------------------------------- storage
def versions(key_dir: str | Path) -> list[int]:
    """The complete versions of a key, ascending."""
    found = Path(key_dir).glob("v*")
    return sorted(int(m.group(1)) for p in found if (m := VERSION_DIR.match(p.name)) and is_complete_dir(p))


def alias_version(key_dir: str | Path, alias: str = BEST) -> int | None:
    """The version an alias points at, or None."""
    link = Path(key_dir) / alias
    match = VERSION_DIR.match(os.readlink(link)) if link.is_symlink() else None
    return int(match.group(1)) if match else None


def _read_registry_json(path: Path) -> Any:
    """A JSON file the registry reads; a damaged one is a :class:`RegistryError` naming it."""
    try:
        return read_json(path)
    except json.JSONDecodeError as error:
        raise RegistryError(f"{path}: not valid JSON ({error.msg}: line {error.lineno} column {error.colno})"
                            ) from None
    except UnicodeDecodeError:
        raise RegistryError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise RegistryError(f"{path}: cannot be read ({error.strerror or error})") from None


def check_meta(meta: Any, path: str | Path, version: int | None = None) -> dict[str, Any]:
    """``meta`` if it is a JSON object with a finite number at ``metric.value`` (and ``version`` if given), else a
    :class:`RegistryError` naming the file and the missing or bad key."""
    if not isinstance(meta, dict):
        raise RegistryError(f"{path}: not a JSON object (found {type(meta).__name__})")
    metric = meta.get("metric")
    if not isinstance(metric, dict) or "value" not in metric:
        raise RegistryError(f"{path}: no metric.value (the version's score is missing)")
    value = metric["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RegistryError(f"{path}: metric.value={value!r} is not a number")
    if not math.isfinite(value):
        raise RegistryError(f"{path}: metric.value={value} is not finite")
    if version is not None and (isinstance(meta.get("version"), bool) or meta.get("version") != version):
        raise RegistryError(f"{path}: version={meta.get('version')!r}, but the directory is v{version}")
    return meta


def version_meta(key_dir: str | Path, version: int) -> dict[str, Any]:
    """The checked ``meta.json`` of ``v<version>`` (:class:`RegistryError`: no such version, or damaged)."""
    path = Path(key_dir) / f"v{version}" / META_FILE
    if not path.is_file():
        raise RegistryError(f"{path.parent}: no such version (versions: {versions(key_dir) or 'none'})")
    return check_meta(_read_registry_json(path), path, version)


def key_dir_of(registry: str | Path, key: str) -> Path:
    """The directory of ``key``, an existing evaluation key of ``registry``. Creates nothing; anything else
    (unknown, a path, ``..``) is a :class:`RegistryError`, so no command can reach outside the registry root."""
    root = Path(registry)
    known = sorted(p.name for p in root.glob("*") if (p / KEY_FILE).is_file()) if root.is_dir() else []
    if key not in known:  # names of entries of root: never a path, never `..`
        shown = ", ".join(known[:5]) + (f", ... ({len(known)} in all)" if len(known) > 5 else "")
        raise RegistryError(f"{root}: no evaluation key {key!r} (keys: {shown or 'none'})")
    return root / key


def parse_version(text: str | int, key_dir: str | Path) -> int:
    """The number of a version argument (``v<N>`` or ``<N>``), else a :class:`RegistryError`."""
    match = VERSION_ARG.match(str(text).strip())
    if match is None:
        have = ", ".join(f"v{v}" for v in versions(key_dir)) or "none"
        raise RegistryError(f"{key_dir}: bad version {str(text)!r}: use v<N> or <N> (versions: {have})")
    return int(match.group(1))


def _point_alias(key_dir: Path, alias: str, version: int) -> None:
    """Swap the alias symlink to ``v<version>`` with one rename (readers see the old or the new target)."""
    tmp = key_dir / f".{alias}.{uuid.uuid4().hex[:8]}"
    os.symlink(f"v{version}", tmp)
    os.replace(tmp, key_dir / alias)


def _log_event(key_dir: Path, **event: Any) -> None:
    with open(key_dir / EVENTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"at": _now(), **event}, ensure_ascii=False, default=str) + "\n")


def _check_key(key_dir: Path, key: EvaluationKey) -> None:
    path = key_dir / KEY_FILE
    if path.is_file():
        stored = _read_registry_json(path)
        if not isinstance(stored, dict):
            raise RegistryError(f"{path}: not a JSON object; cannot tell which evaluation key this directory holds")
        if stored.get("digest") != key.digest():
            raise RegistryError(f"{path}: holds another evaluation key ({stored.get('digest')}, not {key.digest()})")
    else:
        atomic_write_json(path, key.as_json())


@dataclass(frozen=True)
class Promotion:
    """The outcome of :func:`promote_if_better`."""

    promoted: bool
    key_dir: Path
    version: int | None  # the new version when promoted
    incumbent: dict[str, Any] | None  # the meta.json of the version ``best`` pointed at before


def current_best(key_dir: str | Path) -> dict[str, Any] | None:
    """The ``meta.json`` of the version ``best`` points at, or None (:class:`RegistryError` if damaged)."""
    version = alias_version(key_dir)
    return None if version is None else version_meta(key_dir, version)


def promote_if_better(candidate: str | Path, value: float, key: EvaluationKey,
                      registry: str | Path = DEFAULT_REGISTRY, meta: dict[str, Any] | None = None,
                      wandb_run: dict[str, Any] | None = None) -> Promotion:
    """Add ``candidate`` (an exported model directory) as a new version of ``key`` and point ``best`` at it, if
    ``value`` beats ``best``'s. ``meta`` adds facts to ``meta.json`` (run id, sweep id, params, ...); with
    ``wandb_run`` (``{"run_id", "project", "entity"}``) and W&B online, the version is also logged to W&B
    (:func:`log_wandb_model`). A damaged incumbent (missing version, no finite ``metric.value``) is replaced,
    with a warning. Refused (:class:`RegistryError`): a non-finite value, an incomplete candidate, non-finite
    weights, a damaged ``key.json``.
    """
    candidate = Path(candidate)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise RegistryError(f"{key.metric}={value!r} is not a number; not promoted") from None
    if not math.isfinite(value):
        raise RegistryError(f"{key.metric}={value} is not finite; not promoted")
    if not is_complete_dir(candidate):
        raise RegistryError(f"{candidate}: not a complete exported model (no .complete marker)")
    check_finite_weights(candidate)
    key_dir = Path(registry) / key.slug()
    key_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(key_dir / LOCK_FILE):  # every writer of a key takes it (same machine, or NFS with working locks)
        _check_key(key_dir, key)
        damaged: int | None = None
        try:
            incumbent = current_best(key_dir)
        except RegistryError as error:
            damaged, incumbent = alias_version(key_dir), None
            warn(f"dsum: warning: {error}; the '{BEST}' version v{damaged} is unusable, so the candidate replaces it")
        if not beats(value, None if incumbent is None else incumbent["metric"]["value"], key.goal):
            return Promotion(False, key_dir, None, incumbent)
        # Never reuse a number, not even one a crash left behind: versions are immutable.
        version = max((int(m.group(1)) for p in key_dir.iterdir() if (m := VERSION_DIR.match(p.name))), default=0) + 1
        target = key_dir / f"v{version}"
        record = {
            "version": version, "key": key.slug(), "evaluation_key": key.as_json(),
            "metric": {"name": key.metric, "value": value, "goal": key.goal, "settings": key.settings},
            "validation": {"sha256": key.val_sha256, "val_subset": key.val_subset, "file": key.val_name},
            **(meta or {}), "candidate": str(candidate), "promoted_at": _now(),
            "replaced": damaged if incumbent is None else incumbent["version"],
        }

        def fill(staging: Path) -> None:
            shutil.copytree(candidate, staging, dirs_exist_ok=True)
            (staging / ".complete").unlink(missing_ok=True)
            atomic_write_json(staging / META_FILE, record)

        atomic_write_dir(target, fill)
        _point_alias(key_dir, BEST, version)
        _log_event(key_dir, event="promoted", version=version, value=value, run_id=record.get("run_id"),
                   **({"replaced_damaged": damaged} if damaged is not None else {}))
    if wandb_run:
        try:
            log_wandb_model(target, record, **wandb_run)
        except Exception as error:  # noqa: BLE001 (the local version stands; W&B is a mirror)
            warnings.warn(f"dsum: {target} promoted locally, but logging it to W&B failed: {error}", stacklevel=2)
    return Promotion(True, key_dir, version, incumbent)


def move_alias(key_dir: str | Path, version: int, alias: str = BEST) -> dict[str, Any]:
    """Point ``alias`` at an existing version (roll back to an earlier model); returns that version's meta.
    Refused (:class:`RegistryError`, nothing created) for a missing key or version, or a damaged ``meta.json``."""
    key_dir = Path(key_dir)
    if not (key_dir / KEY_FILE).is_file():
        raise RegistryError(f"{key_dir}: not an evaluation key of a registry (no {KEY_FILE})")
    with FileLock(key_dir / LOCK_FILE):
        if version not in versions(key_dir):
            raise RegistryError(f"{key_dir}: no version v{version} (versions: {versions(key_dir) or 'none'})")
        meta = version_meta(key_dir, version)  # refuse a damaged version before the alias moves
        before = alias_version(key_dir, alias)
        _point_alias(key_dir, alias, version)
        _log_event(key_dir, event="alias_moved", alias=alias, version=version, previous=before)
    return meta


def resolve(path: str | Path) -> dict[str, Any] | None:
    """If ``path`` is a registry version or alias, its facts (``path``, ``key``, ``version``, ``value``, ...);
    else None. A damaged ``meta.json`` gives None values and an ``error``."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return None
    facts: dict[str, Any] = {"path": str(path), "resolved": str(path.resolve())}
    try:
        meta = check_meta(_read_registry_json(meta_path), meta_path)
    except RegistryError as error:
        return {**facts, "key": None, "version": None, "value": None, "run_id": None, "error": str(error)}
    return {**facts, "key": meta.get("key"), "version": meta.get("version"), "value": meta["metric"]["value"],
            "run_id": meta.get("run_id")}


def list_keys(registry: str | Path = DEFAULT_REGISTRY) -> list[dict[str, Any]]:
    """Every key of a registry with its versions and where ``best`` points. A damaged ``key.json`` gives
    ``evaluation_key`` None and an ``error``; a damaged version is ``{"version": N, "error": ...}``."""
    rows = []
    for key_dir in sorted(p for p in Path(registry).glob("*") if (p / KEY_FILE).is_file()):
        row: dict[str, Any] = {"key": key_dir.name, "evaluation_key": None, "best": alias_version(key_dir)}
        try:
            row["evaluation_key"] = _read_registry_json(key_dir / KEY_FILE)
            if not isinstance(row["evaluation_key"], dict):
                raise RegistryError(f"{key_dir / KEY_FILE}: not a JSON object")
        except RegistryError as error:
            row.update(evaluation_key=None, error=str(error))
        row["versions"] = []
        for number in versions(key_dir):
            try:
                row["versions"].append(version_meta(key_dir, number))
            except RegistryError as error:
                row["versions"].append({"version": number, "error": str(error)})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- W&B
def wandb_online() -> bool:
    return os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun")


def log_wandb_model(version_dir: Path, meta: dict[str, Any], run_id: str | None = None,
                    project: str | None = None, entity: str | None = None) -> bool:
    """Log a registry version as a W&B model artifact of its run, with aliases ``best`` and ``dsum-v<N>``
    (W&B reserves ``v<N>`` for its own numbering). A no-op offline or without a run id; returns whether it logged."""
    if not (run_id and wandb_online()):
        return False
    import wandb

    run = wandb.init(id=run_id, project=project, entity=entity, resume="allow", job_type="registry",
                     settings=wandb.Settings(silent=True))
    try:
        artifact = wandb.Artifact(f"dsum-{meta['key']}"[:128], type="model",
                                  metadata={k: meta[k] for k in ("version", "metric", "validation", "run_id",
                                                                  "sweep_id") if k in meta})
        artifact.add_dir(str(version_dir))
        run.log_artifact(artifact, aliases=[BEST, f"dsum-v{meta['version']}"])
    finally:
        run.finish()
    return True
