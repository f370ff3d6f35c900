"""Running sweep workers as child processes: one per GPU, each with its own log, none stopping the others."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dsum.infra.log import note


@dataclass
class WorkerResult:
    """How one worker process ended."""

    worker: int
    status: str
    returncode: int
    elapsed_seconds: float
    log_file: str
    gpu: str | None


_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)
try:  # resolved once, before any fork: the child may only make the call itself
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if os.uname().sysname == "Linux" else None
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive the thread that started it: on Linux the kernel sends
    it SIGTERM when that thread (a sweep worker waiting for it) dies, even by SIGKILL. A no-op elsewhere."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, _SIGTERM)


def visible_gpus() -> list[str]:
    """GPU ids to pin workers to: ``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(gpus: list[str], workers: int, per_worker: int = 1) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each worker: disjoint groups of ``per_worker`` GPUs (for trials that run DDP
    inside, with ``--trainer.devices=per_worker``), shared round robin when there are more workers than groups;
    GPUs left over by an uneven split stay unused; ``[None, ...]`` without GPUs. ValueError if ``per_worker`` < 1
    or more than the visible GPUs."""
    if per_worker < 1:
        raise ValueError(f"gpus_per_worker must be >= 1, got {per_worker}")
    if not gpus:
        return [None] * workers
    if per_worker > len(gpus):
        raise ValueError(f"gpus_per_worker={per_worker} but only {len(gpus)} GPU(s) are visible ({','.join(gpus)})")
    groups = [",".join(gpus[i:i + per_worker]) for i in range(0, len(gpus) - per_worker + 1, per_worker)]
    return [groups[i % len(groups)] for i in range(workers)]


def cpu_threads_env(workers: int) -> dict[str, str]:
    """Without GPUs, split the CPU cores between concurrent workers: every process defaulting to all cores
    oversubscribes the machine and runs several times slower. An explicit ``OMP_NUM_THREADS`` wins."""
    if workers <= 1 or visible_gpus() or os.environ.get("OMP_NUM_THREADS"):
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}


def run_workers(commands: list[list[str]], log_dir: str | Path, env: dict[str, str] | None = None,
                gpus_per_worker: int = 1) -> list[WorkerResult]:
    """Start every command at once and wait for all. Worker ``i`` sees only its group of ``gpus_per_worker`` GPUs
    (:func:`gpu_groups`) and writes stdout+stderr to ``<log_dir>/worker_<i>.log``; a failing one stops no other."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    pinned = gpu_groups(visible_gpus(), len(commands), gpus_per_worker)
    env = {**cpu_threads_env(len(commands)), **(env or {})}
    running = []
    for i, (command, gpu) in enumerate(zip(commands, pinned)):
        worker_env = {**os.environ, **env}
        if gpu is not None:
            worker_env["CUDA_VISIBLE_DEVICES"] = gpu
        log_file = log_dir / f"worker_{i}.log"
        handle = open(log_file, "w", encoding="utf-8")
        started = time.monotonic()
        # A worker stops (SIGTERM: its trials record `interrupted`) when this launcher dies, even by SIGKILL.
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=worker_env,
                                   preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
        running.append((i, process, handle, started, log_file, gpu))
        note(f"dsum: worker {i} started (pid {process.pid}, gpu {gpu or 'none'}), log {log_file}")
    results = []
    for i, process, handle, started, log_file, gpu in running:
        code = process.wait()
        handle.close()
        result = WorkerResult(i, "completed" if code == 0 else "failed", code,
                              round(time.monotonic() - started, 2), str(log_file), gpu)
        note(f"dsum: worker {i} {result.status} (return code {code}, {result.elapsed_seconds:.0f}s)")
        results.append(result)
    return results


def results_table(results: list[WorkerResult]) -> list[dict]:
    return [asdict(r) for r in results]
