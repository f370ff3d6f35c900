"""In-process decoding trials for ``python -m dsum.sweep local``: one model load per worker, cached generations.

A trial whose command runs the repository's ``main.py`` with ``validate`` or ``test``
(``sweeps/generation_params.yaml``) does not start a process of its own: each worker slot keeps one long-lived
process (``python -m dsum.sweep.inprocess``) that has imported torch, Lightning and transformers once, and runs
one trial after another with the very argv and environment ``wandb agent`` would give the trial's process
(:func:`run_trial_here`). Each trial still writes its own run directory, run record, log and W&B run; the engine
reads its result the same way.

What the worker keeps between trials, and why it cannot leak:

- **The loaded model** (:class:`ModelCache`): every trial builds a new ``LightningModule`` (new metrics,
  generation settings, post-processing, tokenizer from its own data module); only the Hugging Face model inside
  is reused, when :func:`model_key` (the class, every init argument that shapes the weights, the tokenizer's size
  and added tokens) is the same. Another ``model.pretrained``, LoRA, quantization, dtype or a prompt that adds
  tokens reloads it (one model held at a time); so does another seed when loading drew from the RNG (new token
  rows for the data's masks, a new LoRA adapter: the weights then depend on the seed). A prompt template is the
  data module's: it needs no new model. The model's own generation config is restored to the loaded one
  before the trial applies its settings, and the torch RNG is left as a fresh load leaves it, so a sampling
  trial draws what it would in a process of its own.
- **Generated ids** (:class:`GenerationCache`): a batch whose generated text cannot differ (same model, same
  generation config after Hugging Face's own normalisation, so ``temperature``/``top_p`` do not count when
  ``do_sample`` is false; same input tensors, so the data file, subset, prompt and lengths are in the key;
  same precision; with sampling, the same RNG state) is not generated again: its ids are decoded, post-processed
  and scored again. The trial's user attributes and the sweep summary's ``in_process`` say which trials were
  cache hits.

Trials that ``fit`` (or ``predict``) with ``main.py`` get a process of their own, forked from a per-slot fork
server (``python -m dsum.sweep.inprocess --fork-server``) that has imported torch, Lightning and transformers
once: the fork is a fresh process (own environment, argv, log, RNG, CUDA context), it only skips the imports.
The server starts no thread and never touches a GPU, so forking it is safe.

Opt out with ``DSUM_SWEEP_IN_PROCESS=0`` (or ``run_local(..., in_process=False)``): every trial then gets a
process of its own started from scratch, as before.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsum.constants import SWEEP_DIR_ENV
from dsum.infra.log import every_rank, warn

IN_PROCESS_ENV = "DSUM_SWEEP_IN_PROCESS"
SUBCOMMANDS = ("validate", "test")
REPO_MAIN = Path(__file__).resolve().parents[2] / "main.py"
# Init arguments that never change the model's weights (they are applied per trial to a new LightningModule).
NOT_WEIGHTS = frozenset({
    "generation", "postprocess", "rouge_tokenizer", "rouge_references", "remove_tokens", "learning_rate",
    "weight_decay", "lr_scheduler", "warmup_ratio", "num_cycles", "label_smoothing", "optimizer", "merge_on_export",
    "tokenizer", "input_layout",
})
GENERATION_CACHE_BATCHES = 4096  # generated-id batches a worker keeps (ids only: small)
WORKER_START_TIMEOUT = 600.0


class InProcessError(RuntimeError):
    """The in-process worker broke its protocol (not a trial's failure: those are exit codes)."""


# ------------------------------------------------------------------------------------------- which trials
def in_process_enabled(explicit: bool | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether decoding trials run in-process: ``explicit`` if given, else ``DSUM_SWEEP_IN_PROCESS`` (default on).

    Raises:
        ValueError: ``DSUM_SWEEP_IN_PROCESS`` is not a boolean word.
    """
    if explicit is not None:
        return explicit
    text = environ.get(IN_PROCESS_ENV, "1").strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{IN_PROCESS_ENV}={environ[IN_PROCESS_ENV]!r} must be 1/true/on or 0/false/off")


def main_py_argv(command: Sequence[str], subcommands: Sequence[str]) -> list[str] | None:
    """``sys.argv`` of the trial (``[main.py, <subcommand>, ...]``) when ``command`` runs this repository's
    ``main.py`` with this interpreter and one of ``subcommands``; None for anything else."""
    for i, part in enumerate(command):
        if Path(part).name == "main.py" and Path(part).resolve() == REPO_MAIN:
            before = [Path(p).name for p in command[:i]]
            if command[i - 1:i] != [sys.executable] or any(p not in ("env", Path(sys.executable).name)
                                                          for p in before):
                return None
            rest = list(command[i + 1:])
            return [str(part), *rest] if rest and rest[0] in subcommands else None
    return None


def decoding_argv(command: Sequence[str]) -> list[str] | None:
    """:func:`main_py_argv` of a ``validate`` or ``test`` trial (these run in-process)."""
    return main_py_argv(command, SUBCOMMANDS)


# ------------------------------------------------------------------------------------------- the model cache
def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:20]


def model_key(module: Any) -> str:
    """What identifies the loaded weights of ``module`` (a :class:`~dsum.models.SummarizerBase` being built)."""
    hparams = {k: v for k, v in dict(module.hparams).items() if k not in NOT_WEIGHTS}
    tokenizer = module.tokenizer
    added = sorted(tokenizer.get_added_vocab().items()) if hasattr(tokenizer, "get_added_vocab") else []
    return _digest(f"{type(module).__module__}.{type(module).__qualname__}", hparams, len(tokenizer), added,
                   getattr(tokenizer, "name_or_path", None), repr(getattr(module, "_device_map", None)))


def _rng_state() -> tuple[bytes, list[bytes]]:
    import torch

    cuda = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else []
    return torch.get_rng_state().numpy().tobytes(), cuda


def _get_rng() -> dict[str, Any]:
    import torch

    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}


def _set_rng(state: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])


def _hf_model(model: Any) -> Any:
    """The Hugging Face model whose ``generation_config`` ``generate`` reads (a peft wrapper's base)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class _Loaded:
    key: str
    attributes: dict[str, Any]  # what setup_model set on the module (self.model, counts, ...)
    generation_config: Any  # the loaded model's own, before any trial's settings
    rng_before: bytes  # the torch RNG state the load started from
    rng_after: dict[str, Any] | None  # and left, when the load drew from it (then the weights may depend on it)

    @property
    def identity(self) -> str:
        """The weights' identity for the generation cache (with the seed when the load drew from it)."""
        return self.key if self.rng_after is None else _digest(self.key, self.rng_before.hex())


class ModelCache:
    """One loaded model per worker, reused while :func:`model_key` stays the same (see the module docstring)."""

    def __init__(self) -> None:
        self.loaded: _Loaded | None = None
        self.loads = 0
        self.last: str = ""  # "loaded" or "reused", for the trial's report

    def setup(self, module: Any, original: Callable[[], None]) -> None:
        """``module.setup_model()``: the original on a miss (remembering what it set), else the cached model."""
        if module.hparams.get("compile"):  # compiled layers belong to the module that compiled them
            original()
            self.last = "loaded"
            return
        key = model_key(module)
        before = dict(vars(module))
        modules_before = dict(module._modules)
        rng_before = _rng_state()[0]
        if self.loaded is not None and self.loaded.key == key and (
                self.loaded.rng_after is None or self.loaded.rng_before == rng_before):
            for name, value in self.loaded.attributes.items():
                setattr(module, name, value)
            model = module.model
            hf = _hf_model(model)
            hf.generation_config = copy.deepcopy(self.loaded.generation_config)
            model.train()
            hf.generation_config = module.generation_config()
            if self.loaded.rng_after is not None:  # as a fresh load leaves it (a sampling trial draws the same)
                _set_rng(self.loaded.rng_after)
            self.last = "reused"
            return
        captured: dict[str, Any] = {}
        load = module.load_model

        def load_model(pretrained: str, trust_remote_code: bool) -> Any:
            self.drop()  # here, not before: a quantized base's first setup_model loads nothing
            model = load(pretrained, trust_remote_code)
            captured["generation_config"] = copy.deepcopy(getattr(model, "generation_config", None))
            return model

        object.__setattr__(module, "load_model", load_model)
        try:
            original()
        finally:
            object.__delattr__(module, "load_model")
        self.loads += 1
        self.last = "loaded"
        if module.model is None or "generation_config" not in captured:  # a quantized base loads later
            return
        changed = {k: v for k, v in vars(module).items() if k != "_modules" and before.get(k, _MISSING) is not v}
        changed.update({k: v for k, v in module._modules.items() if modules_before.get(k, _MISSING) is not v})
        drew = _rng_state()[0] != rng_before  # new token rows, a new LoRA adapter: the seed shapes the weights
        self.loaded = _Loaded(key, changed, captured["generation_config"], rng_before, _get_rng() if drew else None)

    def drop(self) -> None:
        """Release the held model (before loading another)."""
        if self.loaded is None:
            return
        self.loaded = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except ImportError:
            pass


_MISSING = object()


def install_setup_model_hook(cache: ModelCache) -> None:
    """Route the outermost ``setup_model`` of every summarizer class through ``cache`` (a subclass calling
    ``super().setup_model()`` runs the base's original inside it)."""
    from dsum.models import SummarizerBase

    classes, todo = [], [SummarizerBase]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    for cls in classes:
        original = cls.__dict__.get("setup_model")
        if original is None or getattr(original, "_dsum_in_process", False):
            continue

        def setup_model(self: Any, _original: Callable[[Any], None] = original) -> None:
            if getattr(self, "_dsum_setting_up", False):
                return _original(self)
            object.__setattr__(self, "_dsum_setting_up", True)
            try:
                cache.setup(self, lambda: _original(self))
            finally:
                object.__setattr__(self, "_dsum_setting_up", False)

        setup_model._dsum_in_process = True  # type: ignore[attr-defined]
        setup_model.__doc__ = original.__doc__
        cls.setup_model = setup_model  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------- generation cache
def _tensor_digest(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return [str(data.dtype), list(data.shape), hashlib.sha256(data.view(torch.uint8).numpy().tobytes()
                                                                   if data.numel() else b"").hexdigest()]
    return None


class GenerationCache:
    """Generated ids by everything that decides them (see the module docstring); counts this trial's hits."""

    def __init__(self, limit: int = GENERATION_CACHE_BATCHES) -> None:
        self.entries: OrderedDict[str, tuple[Any, dict[str, Any] | None]] = OrderedDict()
        self.limit = limit
        self.hits = self.misses = 0

    def key(self, module: Any, batch: Mapping[str, Any], model_id: str) -> tuple[str, bool]:
        """The batch's key, and whether generation samples (then the RNG state is part of it)."""
        config = _hf_model(module.model).generation_config
        sampling = bool(getattr(config, "do_sample", False))
        tensors = {name: _tensor_digest(value) for name, value in batch.items() if name != "labels"}
        trainer = getattr(module, "_trainer", None)
        precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
        rng = hashlib.sha256(b"".join([_rng_state()[0], *_rng_state()[1]])).hexdigest() if sampling else None
        return _digest(model_id, config.to_json_string(use_diff=False), tensors, precision,
                       str(module.device), type(module).__qualname__, rng), sampling

    def wrap(self, module: Any, model_id: str) -> None:
        """Route ``module._generate`` through the cache."""
        generate = module._generate

        def cached_generate(batch: dict[str, Any]) -> Any:
            key, sampling = self.key(module, batch, model_id)
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                ids, rng_after = hit
                if rng_after is not None:
                    _set_rng(rng_after)
                return ids.to(module.device)
            ids = generate(batch)
            self.misses += 1
            self.entries[key] = (ids.detach().cpu(), _get_rng() if sampling else None)
            while len(self.entries) > self.limit:
                self.entries.popitem(last=False)
            return ids

        object.__setattr__(module, "_generate", cached_generate)

    def reset_counts(self) -> None:
        self.hits = self.misses = 0


# ------------------------------------------------------------------------------------------- one trial, here
MODELS = ModelCache()
GENERATIONS = GenerationCache()


def _caching_cli() -> type:
    """``DsumCLI`` whose module reuses the worker's model and generations (see the module docstring)."""
    from dsum.cli import DsumCLI

    class CachingCLI(DsumCLI):
        def instantiate_classes(self) -> None:
            install_setup_model_hook(MODELS)
            super().instantiate_classes()
            if MODELS.loaded is not None and getattr(self.model, "model", None) is MODELS.loaded.attributes.get(
                    "model"):
                GENERATIONS.wrap(self.model, MODELS.loaded.identity)

    return CachingCLI


def run_trial_here(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run one trial in this process as its own process would run (``main.py`` with ``argv`` and exactly
    ``environ``); its exit code. Exceptions are printed, as Python would, and give 1."""
    import dsum.cli
    from dsum.sweep import command

    original_cli = dsum.cli.DsumCLI
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = list(argv)
    GENERATIONS.reset_counts()
    MODELS.last = ""
    dsum.cli.DsumCLI = _caching_cli()  # command.train() imports it by name at call time
    code: int = 0
    try:
        command.train()
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr, flush=True)
            code = 1
        else:
            code = int(stop.code or 0)
    except BaseException:  # noqa: BLE001 (a trial's crash is its exit code, as in its own process)
        traceback.print_exc()
        code = 1
    finally:
        dsum.cli.DsumCLI = original_cli
        _finish_wandb(code)
        gc.collect()
    return code


def _finish_wandb(code: int) -> None:
    """Close a W&B run the trial left open (its own process's exit would)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=code)
        except Exception as error:  # noqa: BLE001 (the trial's result is already recorded)
            warn(f"dsum: W&B run not finished cleanly: {error}")


def trial_report(code: int) -> dict[str, Any]:
    """What the worker tells the engine about the trial it just ran."""
    hits, misses = GENERATIONS.hits, GENERATIONS.misses
    cache = "hit" if hits and not misses else "partial" if hits else "miss" if misses else None
    return {"code": code, "model": MODELS.last or None, "generation_cache": cache,
            "cached_batches": hits, "generated_batches": misses}


@dataclass
class _Redirect:
    """fd 1 and 2 of this process to a trial's log (C code and subprocess output included), then back."""

    log: Path
    saved: tuple[int, int] = (-1, -1)

    def __enter__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def __exit__(self, *exc: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])


def worker_main() -> None:
    """``python -m dsum.sweep.inprocess``: read one trial a line on stdin (``{"argv", "env", "log"}``), run it,
    answer one JSON line on stdout; stop at end of input."""
    import dsum.sweep.command  # noqa: F401 (preloaded: the first trial should not pay it)
    import dsum.cli  # noqa: F401

    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # a trial reads no input, as with stdin=DEVNULL
    os.close(null)
    os.dup2(2, 1)  # between trials: the worker's own log
    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        with _Redirect(Path(request["log"])):
            code = run_trial_here(request["argv"], request["env"])
        answers.write(json.dumps(trial_report(code)) + "\n")
        answers.flush()


# ------------------------------------------------------------------------------------------- the engine side
class InProcessPool:
    """One worker process per slot of a local sweep, started at its first decoding trial."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: dict[int, subprocess.Popen] = {}
        self.servers: dict[int, subprocess.Popen] = {}  # fork servers of training trials, by slot
        self.lock = threading.Lock()

    @staticmethod
    def takes(command: Sequence[str]) -> bool:
        """Whether this trial's command runs in-process."""
        return decoding_argv(command) is not None

    def _worker(self, slot: int, env: Mapping[str, str]) -> subprocess.Popen:
        from dsum.sweep.workers import die_with_parent

        process = self.workers.get(slot)
        if process is not None and process.poll() is None:
            return process
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"slot{slot}.log", "a", encoding="utf-8") as log:
            process = subprocess.Popen([sys.executable, "-m", "dsum.sweep.inprocess"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, env=dict(env), text=True,
                                       preexec_fn=die_with_parent)  # noqa: PLW1509 (async-signal-safe)
        answer = self._answer(process, WORKER_START_TIMEOUT, lambda: None)
        if "ready" not in answer:
            raise InProcessError(f"in-process worker {slot} did not start: {answer}")
        self.workers[slot] = process
        return process

    @staticmethod
    def _answer(process: subprocess.Popen, timeout: float | None, beat: Callable[[], None],
                every: float = 30.0) -> dict[str, Any]:
        """The worker's next JSON line; ``beat()`` every ``every`` seconds meanwhile; ``{"code": rc}`` if it died."""
        assert process.stdout is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([process.stdout], [], [], every)
            if ready:
                line = process.stdout.readline()
                if line:
                    return json.loads(line)
                return {"code": process.wait(), "died": True}
            beat()
            if deadline is not None and time.monotonic() > deadline:
                raise InProcessError("in-process worker gave no answer in time")

    def run(self, slot: int, command: Sequence[str], env: Mapping[str, str], log_path: Path,
            started: Callable[[subprocess.Popen], None], beat: Callable[[], None], every: float) -> dict[str, Any]:
        """Run one trial in slot ``slot``'s worker; the worker's report (``code`` is the trial's exit code).
        ``started(process)`` is called once the worker holds the trial."""
        argv = decoding_argv(command)
        if argv is None:
            raise ValueError(f"not a decoding trial: {command}")
        try:
            process = self._worker(slot, env)
        except (OSError, InProcessError) as error:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"dsum: cannot start the in-process worker: {error}\n")
            return {"code": None}
        assert process.stdin is not None
        process.stdin.write(json.dumps({"argv": argv, "env": dict(env), "log": str(log_path)}) + "\n")
        process.stdin.flush()
        started(process)
        answer = self._answer(process, None, beat, every)
        if answer.get("died"):
            self.workers.pop(slot, None)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"dsum: the in-process worker died (exit code {answer['code']}); the next trial "
                          "starts a new one\n")
        return answer

    def run_claim(self, sweep: Any, claim: Any, slot: int, command: Sequence[str], env: Mapping[str, str],
                  log_path: Path) -> int | None:
        """Run a :class:`~dsum.sweep.local.LocalSweep` trial here: the worker is the trial's process for
        ``--workers``, SIGTERM and stale-trial checks; heartbeats as for a trial process; what the worker reports
        (model loaded or reused, generation cache) in the trial's user attributes. The trial's exit code."""
        from dsum.sweep.trials import (
            HEARTBEAT_ATTR, HEARTBEAT_SECONDS, TRIAL_PID_ATTR, TRIAL_STARTED_ATTR, process_started,
        )

        trial = claim.trial

        def started(process: subprocess.Popen) -> None:
            sweep.running[claim.number] = process
            try:
                trial.set_user_attr(TRIAL_PID_ATTR, process.pid)
                trial.set_user_attr(TRIAL_STARTED_ATTR, process_started(process.pid))
            except Exception as error:  # noqa: BLE001 (a storage hiccup must not stop the trial)
                warn(f"dsum: trial {claim.number}: its pid was not recorded ({error})")

        def beat() -> None:
            try:
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except Exception as error:  # noqa: BLE001
                warn(f"dsum: trial {claim.number}: heartbeat not recorded ({error})")

        try:
            answer = self.run(slot, command, env, log_path, started, beat, HEARTBEAT_SECONDS)
        finally:
            sweep.running.pop(claim.number, None)
        trial.set_user_attr("in_process", True)
        for key in ("model", "generation_cache", "cached_batches", "generated_batches"):
            if answer.get(key) is not None:
                trial.set_user_attr(key, answer[key])
        return answer.get("code")

    @staticmethod
    def forks(command: Sequence[str]) -> bool:
        """Whether this trial's process is forked from the slot's fork server (``fit``/``predict`` of main.py)."""
        return training_argv(command) is not None

    def fork(self, slot: int, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> ForkedTrial:
        """Start a training trial as a fork of slot ``slot``'s fork server (started at its first trial).

        Raises:
            OSError: the fork server could not start or died before forking.
        """
        from dsum.sweep.workers import die_with_parent

        argv = training_argv(command)
        if argv is None:
            raise ValueError(f"not a training trial: {command}")
        server = self.servers.get(slot)
        if server is None or server.poll() is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"fork_server{slot}.log", "a", encoding="utf-8") as log:
                server = subprocess.Popen([sys.executable, "-m", "dsum.sweep.inprocess", "--fork-server"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=dict(env),
                                          text=True, preexec_fn=die_with_parent)  # noqa: PLW1509
            try:
                answer = self._answer(server, WORKER_START_TIMEOUT, lambda: None)
            except InProcessError as error:
                raise OSError(str(error)) from None
            if "ready" not in answer:
                raise OSError(f"the fork server did not start (exit code {answer.get('code')}); see "
                              f"{self.log_dir / f'fork_server{slot}.log'}")
            self.servers[slot] = server
        assert server.stdin is not None
        try:
            server.stdin.write(json.dumps({"argv": argv, "env": dict(env), "log": str(log_path),
                                           "cwd": os.getcwd()}) + "\n")
            server.stdin.flush()
            answer = self._answer(server, WORKER_START_TIMEOUT, lambda: None)
        except (OSError, InProcessError) as error:
            self.servers.pop(slot, None)
            raise OSError(f"the fork server failed: {error}") from None
        if "pid" not in answer:
            self.servers.pop(slot, None)
            raise OSError(f"the fork server died (exit code {answer.get('code')})")
        return ForkedTrial(server, int(answer["pid"]))

    def close(self) -> None:
        """End every worker (end of input), waiting a little for each."""
        self.workers.update({-1 - slot: server for slot, server in self.servers.items()})
        self.servers.clear()
        for process in self.workers.values():
            try:
                if process.stdin is not None:
                    process.stdin.close()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        self.workers.clear()


def summary_field(trials: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``{run_id: {model, generation_cache, cached_batches, generated_batches}}`` of the in-process trials
    (Optuna frozen trials with the user attributes :meth:`InProcessPool.run` reports)."""
    rows = {}
    for trial in trials:
        attrs = trial.user_attrs
        if attrs.get("in_process") and attrs.get("run_id"):
            rows[attrs["run_id"]] = {k: attrs.get(k) for k in ("model", "generation_cache", "cached_batches",
                                                                 "generated_batches")}
    return rows


# ------------------------------------------------------------------------------------------- training trials: forks
def training_argv(command: Sequence[str]) -> list[str] | None:
    """:func:`main_py_argv` of a ``fit`` (or ``predict``) trial (these fork from the preloaded server)."""
    return main_py_argv(command, ("fit", "predict"))


def _child(request: Mapping[str, Any], channels: Sequence[Any]) -> None:
    """In a fresh fork of the fork server: become the trial's process (log, environment, argv) and run it."""
    code = 1
    try:
        from dsum.sweep.workers import die_with_parent

        die_with_parent()  # SIGTERM when the fork server dies, as a trial process gets when its worker dies
        for channel in channels:
            channel.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        from dsum.sweep import command

        try:
            command.train()
            code = 0
        except SystemExit as stop:
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr, flush=True)
            code = 1 if isinstance(stop.code, str) else int(stop.code or 0)
    except BaseException:  # noqa: BLE001 (a crash is the trial's exit code, as in its own process)
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def fork_server_main() -> None:
    """``python -m dsum.sweep.inprocess --fork-server``: torch, Lightning and transformers imported once; for each
    request line (``{"argv", "env", "log", "cwd"}``) fork a trial process, answer ``{"pid"}`` at once and
    ``{"code"}`` when it ends. The server itself starts no thread and touches no GPU, so a fork is safe."""
    import dsum.cli  # noqa: F401 (the imports every trial would pay)
    import dsum.sweep.command  # noqa: F401
    from dsum.sweep.cli_keys import native_options
    from dsum.sweep.mapping import bool_aliases

    native_options(), bool_aliases()  # the CLI parser's keys and types, read once here, not in every forked trial

    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, (requests, answers))
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


class ForkedTrial:
    """A trial process forked by a fork server, with the ``subprocess.Popen`` methods the engine uses."""

    def __init__(self, server: subprocess.Popen, pid: int) -> None:
        self.server, self.pid = server, pid
        self.returncode: int | None = None
        self.reading = threading.Lock()  # the sweep's main thread polls while the worker thread waits

    def poll(self) -> int | None:
        return self._answer(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._answer(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["fork", str(self.pid)], timeout or 0.0)
        return code

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _answer(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if not self.reading.acquire(blocking=timeout != 0.0):
            return None  # another thread is waiting for the answer: still running
        try:
            if self.returncode is not None:
                return self.returncode
            assert self.server.stdout is not None
            ready, _, _ = select.select([self.server.stdout], [], [], timeout)
            if not ready:
                return None
            line = self.server.stdout.readline()
            # The server died (its trial then got SIGTERM): the trial's code is unknown, its record decides.
            self.returncode = json.loads(line)["code"] if line else (self.server.wait() or 1)
            return self.returncode
        finally:
            self.reading.release()


def run_sweep(sweep: Any, in_process: bool | None = None) -> dict[str, Any]:
    """``sweep.run()`` (a :class:`~dsum.sweep.local.LocalSweep`) with its decoding trials in-process unless
    opted out (:func:`in_process_enabled`); the summary gets ``in_process`` (:func:`summary_field`), also when
    the sweep stops early."""
    from dsum.infra.files import atomic_write_json
    from dsum.infra.secrets import redact

    if not in_process_enabled(in_process):
        return sweep.run()
    sweep.in_process = InProcessPool(sweep.sweep_dir / "logs" / "in_process")
    summary: dict[str, Any] | None = None
    try:
        summary = sweep.run()
        return summary
    finally:
        sweep.in_process.close()
        rows = summary_field(sweep.study.get_trials(deepcopy=False))
        path = sweep.sweep_dir / f"{sweep.study_id}_summary.json"
        if rows and path.is_file():
            written = json.loads(path.read_text(encoding="utf-8"))
            written["in_process"] = rows
            atomic_write_json(path, redact(written))
            if summary is not None:
                summary["in_process"] = rows


def run_wandb_agent(sweep_id: str, name: str, config: Mapping[str, Any], count: int | None = None,
                    project: str | None = None, entity: str | None = None,
                    agent: Callable[..., Any] | None = None) -> int:
    """A W&B agent whose decoding trials run in this machine's in-process worker.

    W&B's Python agent (``wandb.agent(sweep, function=...)``) calls ``function`` once per trial in this process,
    with the trial's ``WANDB_RUN_ID``, ``WANDB_SWEEP_ID`` and ``WANDB_SWEEP_PARAM_PATH`` set, as ``wandb agent``
    sets them for a trial process. The function builds the trial's command exactly as ``wandb agent`` would from the
    sweep's ``command`` (:func:`dsum.sweep.trials.agent_command`) and hands a ``validate``/``test`` trial to the
    worker (model kept loaded, generations reused), anything else to a process of its own. The trial opens its own
    W&B run with that id, as a trial process does. Returns the number of failed trials.

    Args:
        sweep_id: The W&B sweep.
        name: The sweep's name (its output directory ``outputs/sweep_<name>``).
        config: The sweep's YAML config (its ``command`` and ``program``).
        count: Trials this agent runs (default: until the sweep ends).
        project: W&B project.
        entity: W&B entity.
        agent: ``wandb.agent`` (a stand-in in tests).
    """
    import yaml

    from dsum.sweep.summary import sweep_dir_for
    from dsum.sweep.trials import agent_command as trial_command
    from dsum.sweep.wandb_backend import agent_env, sweep_path

    if agent is None:
        import wandb

        agent = wandb.agent
    sweep_dir = Path(os.environ.get(SWEEP_DIR_ENV) or sweep_dir_for(name))
    pool = InProcessPool(sweep_dir / "logs" / "in_process")
    extra = agent_env(name)
    failed: list[str] = []

    def trial() -> None:
        run_id = os.environ["WANDB_RUN_ID"]
        with open(os.environ["WANDB_SWEEP_PARAM_PATH"], encoding="utf-8") as handle:
            entries = yaml.safe_load(handle) or {}
        params = {key: entry["value"] for key, entry in entries.items() if key != "wandb_version"}
        args_json = sweep_dir / "logs" / f"{run_id}.args.json"
        command, wants_json = trial_command(config, params, args_json)
        log_path = sweep_dir / "logs" / f"{run_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if wants_json:
            args_json.write_text(json.dumps(params), encoding="utf-8")
        env = {**os.environ, **extra}
        if pool.takes(command):
            code = pool.run(0, command, env, log_path, started=lambda process: None, beat=lambda: None,
                            every=30.0).get("code")
        else:
            with open(log_path, "a", encoding="utf-8") as log:
                code = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            failed.append(run_id)
            raise RuntimeError(f"trial {run_id} failed (exit {code}); log {log_path}")

    try:
        agent(sweep_path(sweep_id, project, entity), function=trial, count=count, project=project, entity=entity)
    finally:
        pool.close()
    return len(failed)


if __name__ == "__main__":
    every_rank()  # the sweep engine's worker, not one rank of a training job
    fork_server_main() if sys.argv[1:] == ["--fork-server"] else worker_main()
