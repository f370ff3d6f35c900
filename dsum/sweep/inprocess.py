"""In-process trials for ``python -m dsum.sweep local`` (and ``agent``): imports, model and generations paid once
per worker, not once per trial.

A ``validate``/``test`` trial of the repository's ``main.py`` runs in its slot's long-lived worker (``python -m
dsum.sweep.inprocess``) with the argv and environment ``wandb agent`` would give its process; it still writes its own
run directory, record, log and W&B run. Between trials the worker keeps only the Hugging Face model
(:class:`ModelCache`: while :func:`model_key` and, when loading drew from the RNG, the seed stay the same; its
generation config and the torch RNG put back as a fresh load leaves them, so a sampling trial draws the same) and
the ids generated for batches whose output cannot differ (:class:`GenerationCache`: same weights, generation config
as Hugging Face normalises it, input tensors, precision and, when sampling, RNG state), only decoded and scored again.
One model is held at a time: another ``model.pretrained``, LoRA, quantization, dtype or a prompt that adds tokens
reloads it. The trial's user attributes and the sweep summary's ``in_process`` say which trials were cache hits.

A ``fit``/``predict`` trial forks from its slot's fork server (``python -m dsum.sweep.inprocess --fork-server``),
which starts no thread and touches no GPU: a fresh process (environment, argv, log, RNG, CUDA context) that only
skips the imports. Opt out with ``DSUM_SWEEP_IN_PROCESS=0`` (or ``run_local(..., in_process=False)``): every trial
then gets a process of its own.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsum.constants import SWEEP_DIR_ENV
from dsum.infra.log import every_rank, warn
from dsum.sweep.workers import die_with_parent

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
REPORT_KEYS = ("model", "generation_cache", "cached_batches", "generated_batches")  # a trial's user attributes


class InProcessError(RuntimeError):
    """The in-process worker broke its protocol (not a trial's failure: those are exit codes)."""


# ------------------------------------------------------------------------------------------- which trials
def in_process_enabled(explicit: bool | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether decoding trials run in-process: ``explicit`` if given, else ``DSUM_SWEEP_IN_PROCESS`` (default on;
    ValueError if it is not a boolean word)."""
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
            launchers = ("env", Path(sys.executable).name)
            if command[i - 1:i] != [sys.executable] or any(Path(p).name not in launchers for p in command[:i]):
                return None
            rest = list(command[i + 1:])
            return [str(part), *rest] if rest and rest[0] in subcommands else None
    return None


def decoding_argv(command: Sequence[str]) -> list[str] | None:
    """:func:`main_py_argv` of a ``validate`` or ``test`` trial (these run in-process)."""
    return main_py_argv(command, SUBCOMMANDS)


def training_argv(command: Sequence[str]) -> list[str] | None:
    """:func:`main_py_argv` of a ``fit`` (or ``predict``) trial (these fork from the preloaded server)."""
    return main_py_argv(command, ("fit", "predict"))


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


def _rng_bytes(cuda: bool = False) -> bytes:
    """The torch CPU generator's state (and every CUDA generator's when ``cuda``), to compare."""
    states = [torch.get_rng_state()]
    if cuda and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return b"".join(state.numpy().tobytes() for state in states)


def _get_rng() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}


def _set_rng(state: Mapping[str, Any]) -> None:
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


_MISSING = object()


class ModelCache:
    """One loaded model per worker, reused while :func:`model_key` stays the same (see the module docstring)."""

    def __init__(self) -> None:
        self.loaded: _Loaded | None = None
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
        rng_before = _rng_bytes()
        loaded = self.loaded
        if loaded is not None and loaded.key == key and (loaded.rng_after is None or loaded.rng_before == rng_before):
            for name, value in loaded.attributes.items():
                setattr(module, name, value)
            hf = _hf_model(module.model)
            hf.generation_config = copy.deepcopy(loaded.generation_config)
            module.model.train()
            hf.generation_config = module.generation_config()
            if loaded.rng_after is not None:  # as a fresh load leaves it (a sampling trial draws the same)
                _set_rng(loaded.rng_after)
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
        self.last = "loaded"
        if module.model is None or "generation_config" not in captured:  # a quantized base loads later
            return
        changed = {k: v for k, v in vars(module).items() if k != "_modules" and before.get(k, _MISSING) is not v}
        changed.update({k: v for k, v in module._modules.items() if modules_before.get(k, _MISSING) is not v})
        drew = _rng_bytes() != rng_before  # new token rows, a new LoRA adapter: the seed shapes the weights
        self.loaded = _Loaded(key, changed, captured["generation_config"], rng_before, _get_rng() if drew else None)

    def drop(self) -> None:
        """Release the held model (before loading another)."""
        if self.loaded is not None:
            self.loaded = None
            gc.collect()
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()


def install_setup_model_hook(cache: ModelCache) -> None:
    """Route the outermost ``setup_model`` of every summarizer class through ``cache`` (a subclass calling
    ``super().setup_model()`` runs the base's original inside it)."""
    from dsum.models import SummarizerBase

    todo = [SummarizerBase]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
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
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return [str(data.dtype), list(data.shape), hashlib.sha256(data.view(torch.uint8).numpy().tobytes()
                                                                   if data.numel() else b"").hexdigest()]
    return None


class GenerationCache:
    """Generated ids by everything that decides them (see the module docstring); counts this trial's hits."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[Any, dict[str, Any] | None]] = OrderedDict()
        self.hits = self.misses = 0

    def key(self, module: Any, batch: Mapping[str, Any], model_id: str) -> tuple[str, bool]:
        """The batch's key, and whether generation samples (then the RNG state is part of it)."""
        config = _hf_model(module.model).generation_config
        sampling = bool(getattr(config, "do_sample", False))
        tensors = {name: _tensor_digest(value) for name, value in batch.items() if name != "labels"}
        precision = str(getattr(getattr(module, "_trainer", None), "precision", ""))
        rng = hashlib.sha256(_rng_bytes(cuda=True)).hexdigest() if sampling else None
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
            while len(self.entries) > GENERATION_CACHE_BATCHES:
                self.entries.popitem(last=False)
            return ids

        object.__setattr__(module, "_generate", cached_generate)


# ------------------------------------------------------------------------------------------- one trial, here
MODELS = ModelCache()
GENERATIONS = GenerationCache()


def _train(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run ``main.py`` here with ``argv`` and exactly ``environ``; its exit code, as its own process would end
    (exceptions printed, as Python would, give 1)."""
    from dsum.sweep import command

    os.environ.clear()
    os.environ.update(environ)
    sys.argv = list(argv)
    try:
        command.train()
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr, flush=True)
            return 1
        return int(stop.code or 0)
    except BaseException:  # noqa: BLE001 (a trial's crash is its exit code, as in its own process)
        traceback.print_exc()
        return 1
    return 0


def run_trial_here(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run one trial in this process as its own process would run (:func:`_train`), its module reusing the
    worker's model and generations (see the module docstring); its exit code."""
    import dsum.cli

    original_cli = dsum.cli.DsumCLI

    class CachingCLI(original_cli):
        def instantiate_classes(self) -> None:
            install_setup_model_hook(MODELS)
            super().instantiate_classes()
            loaded = MODELS.loaded
            if loaded is not None and getattr(self.model, "model", None) is loaded.attributes.get("model"):
                GENERATIONS.wrap(self.model, loaded.identity)

    GENERATIONS.hits = GENERATIONS.misses = 0
    MODELS.last = ""
    dsum.cli.DsumCLI = CachingCLI  # command.train() imports it by name at call time
    code = _train(argv, environ)
    dsum.cli.DsumCLI = original_cli
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:  # left open: its process's exit would close it
        try:
            wandb.finish(exit_code=code)
        except Exception as error:  # noqa: BLE001 (the trial's result is already recorded)
            warn(f"dsum: W&B run not finished cleanly: {error}")
    gc.collect()
    return code


def trial_report(code: int) -> dict[str, Any]:
    """What the worker tells the engine about the trial it just ran."""
    hits, misses = GENERATIONS.hits, GENERATIONS.misses
    cache = "hit" if hits and not misses else "partial" if hits else "miss" if misses else None
    return {"code": code, "model": MODELS.last or None, "generation_cache": cache,
            "cached_batches": hits, "generated_batches": misses}


# ------------------------------------------------------------------------------------------- the worker processes
def _open_as(path: str | Path, *fds: int, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> None:
    """Open ``path`` (by default a log, appended to) as each of this process's ``fds``."""
    fd = os.open(path, flags, 0o644)
    for target in fds:
        os.dup2(fd, target)
    os.close(fd)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _send(stream: Any, message: Mapping[str, Any]) -> None:
    """One JSON line to ``stream`` (the worker protocol)."""
    stream.write(json.dumps(message) + "\n")
    stream.flush()


@contextlib.contextmanager
def _redirected(log: str | Path) -> Iterator[None]:
    """fd 1 and 2 of this process to a trial's log (C code and subprocess output included), then back."""
    _flush()
    saved = (os.dup(1), os.dup(2))
    _open_as(log, 1, 2)
    try:
        yield
    finally:
        _flush()
        for fd, kept in zip((1, 2), saved):
            os.dup2(kept, fd)
            os.close(kept)


def _serve() -> tuple[Any, Any]:
    """A worker's requests and answers (JSON lines on its stdin and stdout) after the imports every trial would pay
    and ``{"ready": pid}``. fd 0 is then /dev/null (a trial reads no input), fd 1 the worker's log (its stderr)."""
    import dsum.cli  # noqa: F401
    import dsum.sweep.command  # noqa: F401

    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    _open_as(os.devnull, 0, flags=os.O_RDONLY)
    os.dup2(2, 1)
    _send(answers, {"ready": os.getpid()})
    return requests, answers


def worker_main() -> None:
    """``python -m dsum.sweep.inprocess``: read one trial a line on stdin (``{"argv", "env", "log"}``), run it,
    answer one JSON line on stdout; stop at end of input."""
    requests, answers = _serve()
    for line in requests:
        request = json.loads(line)
        with _redirected(request["log"]):
            code = run_trial_here(request["argv"], request["env"])
        _send(answers, trial_report(code))


def _child(request: Mapping[str, Any], channels: Sequence[Any]) -> None:
    """In a fresh fork of the fork server: become the trial's process (log, environment, argv) and run it."""
    code = 1
    try:
        die_with_parent()  # SIGTERM when the fork server dies, as a trial process gets when its worker dies
        for channel in channels:
            channel.close()
        _open_as(request["log"], 1, 2)
        os.chdir(request["cwd"])
        code = _train(request["argv"], request["env"])
    except BaseException:  # noqa: BLE001 (a crash is the trial's exit code, as in its own process)
        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def fork_server_main() -> None:
    """``python -m dsum.sweep.inprocess --fork-server``: torch, Lightning and transformers imported once; for each
    request line (``{"argv", "env", "log", "cwd"}``) fork a trial process, answer ``{"pid"}`` at once and
    ``{"code"}`` when it ends. The server itself starts no thread and touches no GPU, so a fork is safe."""
    from dsum.sweep.cli_keys import native_options
    from dsum.sweep.mapping import bool_aliases

    native_options(), bool_aliases()  # the CLI parser's keys and types, read once here, not in every forked trial
    requests, answers = _serve()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, (requests, answers))
        _send(answers, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(answers, {"code": os.waitstatus_to_exitcode(status)})


# ------------------------------------------------------------------------------------------- the engine side
class InProcessPool:
    """Per slot of a local sweep, one worker process (decoding trials) and one fork server (training trials)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: dict[int, subprocess.Popen] = {}
        self.servers: dict[int, subprocess.Popen] = {}  # fork servers of training trials, by slot

    @staticmethod
    def takes(command: Sequence[str]) -> bool:
        """Whether this trial's command runs in-process."""
        return decoding_argv(command) is not None

    @staticmethod
    def forks(command: Sequence[str]) -> bool:
        """Whether this trial's process is forked from the slot's fork server (``fit``/``predict`` of main.py)."""
        return training_argv(command) is not None

    def _start(self, args: Sequence[str], log: Path, env: Mapping[str, str]) -> tuple[subprocess.Popen, dict]:
        """A new ``python -m dsum.sweep.inprocess *args`` (stderr to ``log``), and its first answer."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as handle:
            process = subprocess.Popen([sys.executable, "-m", "dsum.sweep.inprocess", *args], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=handle, env=dict(env), text=True,
                                       preexec_fn=die_with_parent)  # noqa: PLW1509 (async-signal-safe)
        return process, self._answer(process, WORKER_START_TIMEOUT, lambda: None)

    @staticmethod
    def _answer(process: subprocess.Popen, timeout: float | None, beat: Callable[[], None],
                every: float = 30.0) -> dict[str, Any]:
        """The worker's next JSON line; ``beat()`` every ``every`` seconds meanwhile; ``{"code": rc}`` if it died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([process.stdout], [], [], every)
            if ready:
                line = process.stdout.readline()
                return json.loads(line) if line else {"code": process.wait(), "died": True}
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
        process = self.workers.get(slot)
        try:
            if process is None or process.poll() is not None:
                process, answer = self._start([], self.log_dir / f"slot{slot}.log", env)
                if "ready" not in answer:
                    raise InProcessError(f"in-process worker {slot} did not start: {answer}")
                self.workers[slot] = process
        except (OSError, InProcessError) as error:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"dsum: cannot start the in-process worker: {error}\n")
            return {"code": None}
        _send(process.stdin, {"argv": argv, "env": dict(env), "log": str(log_path)})
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
        from dsum.sweep import trials

        trial = claim.trial

        def started(process: subprocess.Popen) -> None:
            sweep.running[claim.number] = process
            try:
                trial.set_user_attr(trials.TRIAL_PID_ATTR, process.pid)
                trial.set_user_attr(trials.TRIAL_STARTED_ATTR, trials.process_started(process.pid))
            except Exception as error:  # noqa: BLE001 (a storage hiccup must not stop the trial)
                warn(f"dsum: trial {claim.number}: its pid was not recorded ({error})")

        def beat() -> None:
            try:
                trial.set_user_attr(trials.HEARTBEAT_ATTR, time.time())
            except Exception as error:  # noqa: BLE001
                warn(f"dsum: trial {claim.number}: heartbeat not recorded ({error})")

        try:
            answer = self.run(slot, command, env, log_path, started, beat, trials.HEARTBEAT_SECONDS)
        finally:
            sweep.running.pop(claim.number, None)
        trial.set_user_attr("in_process", True)
        for key in REPORT_KEYS:
            if answer.get(key) is not None:
                trial.set_user_attr(key, answer[key])
        return answer.get("code")

    def fork(self, slot: int, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> ForkedTrial:
        """Start a training trial as a fork of slot ``slot``'s fork server (started at its first trial); OSError if
        the server could not start or died before forking."""
        argv = training_argv(command)
        if argv is None:
            raise ValueError(f"not a training trial: {command}")
        server = self.servers.get(slot)
        if server is None or server.poll() is not None:
            log = self.log_dir / f"fork_server{slot}.log"
            try:
                server, answer = self._start(["--fork-server"], log, env)
            except InProcessError as error:
                raise OSError(str(error)) from None
            if "ready" not in answer:
                raise OSError(f"the fork server did not start (exit code {answer.get('code')}); see {log}")
            self.servers[slot] = server
        try:
            _send(server.stdin, {"argv": argv, "env": dict(env), "log": str(log_path), "cwd": os.getcwd()})
            answer = self._answer(server, WORKER_START_TIMEOUT, lambda: None)
        except (OSError, InProcessError) as error:
            self.servers.pop(slot, None)
            raise OSError(f"the fork server failed: {error}") from None
        if "pid" not in answer:
            self.servers.pop(slot, None)
            raise OSError(f"the fork server died (exit code {answer.get('code')})")
        return ForkedTrial(server, int(answer["pid"]))

    def close(self) -> None:
        """End every worker and fork server (end of input), waiting a little for each."""
        for process in [*self.workers.values(), *self.servers.values()]:
            try:
                process.stdin.close()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        self.workers.clear()
        self.servers.clear()


def summary_field(trials: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``{run_id: {model, generation_cache, cached_batches, generated_batches}}`` of the in-process trials
    (Optuna frozen trials with the user attributes :meth:`InProcessPool.run` reports)."""
    return {attrs["run_id"]: {k: attrs.get(k) for k in REPORT_KEYS}
            for attrs in (trial.user_attrs for trial in trials) if attrs.get("in_process") and attrs.get("run_id")}


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
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _answer(self, timeout: float | None) -> int | None:
        """The exit code, None while the trial runs (also while another thread is waiting for it)."""
        if self.returncode is None and self.reading.acquire(blocking=timeout != 0.0):
            try:
                if self.returncode is None and select.select([self.server.stdout], [], [], timeout)[0]:
                    line = self.server.stdout.readline()
                    # The server died (its trial then got SIGTERM): the trial's code is unknown, its record decides.
                    self.returncode = json.loads(line)["code"] if line else (self.server.wait() or 1)
            finally:
                self.reading.release()
        return self.returncode


def run_sweep(sweep: Any, in_process: bool | None = None) -> dict[str, Any]:
    """``sweep.run()`` (a :class:`~dsum.sweep.local.LocalSweep`) with its decoding trials in-process unless opted out
    (:func:`in_process_enabled`); the summary gets ``in_process`` (:func:`summary_field`), also when it stops early."""
    from dsum.infra.files import atomic_write_json, read_json
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
            atomic_write_json(path, redact({**read_json(path), "in_process": rows}))
            if summary is not None:
                summary["in_process"] = rows


def run_wandb_agent(sweep_id: str, name: str, config: Mapping[str, Any], count: int | None = None,
                    project: str | None = None, entity: str | None = None,
                    agent: Callable[..., Any] | None = None) -> int:
    """A W&B agent whose ``validate``/``test`` trials run in this machine's in-process worker, anything else in a
    process of its own; the number of failed trials. ``agent`` (``wandb.agent`` or a stand-in) calls ``trial`` once
    per trial with ``WANDB_RUN_ID``, ``WANDB_SWEEP_ID`` and ``WANDB_SWEEP_PARAM_PATH`` set, which runs the command
    ``wandb agent`` would build from ``config`` (the sweep's YAML, :func:`dsum.sweep.trials.agent_command`) under
    ``outputs/sweep_<name>``."""
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
        entries = yaml.safe_load(Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text(encoding="utf-8")) or {}
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
