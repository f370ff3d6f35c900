"""Shared fixtures: the bundled sample, tiny offline models built once per session, offline W&B."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never reach the W&B server or the Hugging Face Hub.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random BART, T5 and GPT-2 (HF format) with tokenizers trained on the sample."""
    from dsum.tiny.build import build_all

    return build_all([SAMPLE / "train.csv"], tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture()
def sample_dir() -> Path:
    return SAMPLE


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write raw CSV text (exact bytes matter for BOM / CRLF / encoding tests)."""
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama-style chat LLM of ``python -m dsum.tiny`` (briefly pre-trained on the sample's text)."""
    from dsum.tiny.llm import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "llm", [SAMPLE / "train.csv"])


@pytest.fixture(scope="session")
def tiny_llm_random(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller tiny chat LLM with random weights (no pre-training): for fast tests of the mechanics."""
    from dsum.tiny.llm import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm_random") / "llm", [SAMPLE / "train.csv"], d_model=32,
                          layers=1, vocab_size=1000, pretrain_steps=0)


def sample_run_args(config: str, model: Path, run_dir: Path, *extra: str) -> list[str]:
    """A shipped config (``configs/<config>``) on the bundled sample with ``model``, writing under ``run_dir``."""
    return [
        "--config", str(REPO / "configs" / config),
        f"--model.pretrained={model}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.train_file={SAMPLE / 'train.csv'}",
        f"--data.val_file={SAMPLE / 'dev.csv'}",
        f"--data.predict_file={SAMPLE / 'test.csv'}",
        f"--data.cache_dir={run_dir.parent / 'cache'}",
        "--trainer.logger=false",
        *extra,
    ]


def command_fails(main: Callable[[list[str]], object], capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run a ``python -m dsum.X`` entry point that must fail: a non-zero exit, nothing on stdout; its message."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code not in (0, None)
    assert capsys.readouterr().out == ""
    return str(exit_info.value.code)


def help_text(main: Callable[[list[str]], object], capsys: pytest.CaptureFixture[str]) -> str:
    """The ``--help`` of a ``python -m dsum.X`` entry point, on one line (help lines are wrapped); it must exit 0."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code in (0, None)
    return " ".join(capsys.readouterr().out.split())


def run_if(min_gpus: int = 0, bf16: bool = False, packages: Sequence[str] = ()) -> pytest.MarkDecorator:
    """Skip the test unless this machine has what it needs, saying exactly what is missing (in the style of
    lightning-hydra-template's ``RunIf``): ``@run_if(min_gpus=2, bf16=True, packages=["bitsandbytes"])``.

    Args:
        min_gpus: CUDA GPUs the test needs (``torch.cuda.device_count()``).
        bf16: Native bfloat16 on CUDA (compute capability 8.0 or newer: Ampere, Hopper), not emulation.
        packages: Importable top-level packages the test needs.

    Returns:
        ``pytest.mark.skipif`` whose reason names every unmet requirement and what the machine has instead.
    """
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing: list[str] = []
    if gpus < min_gpus:
        missing.append(f"{min_gpus} CUDA GPU{'s' if min_gpus > 1 else ''} (found {gpus})")
    if bf16 and not (gpus and torch.cuda.is_bf16_supported(including_emulation=False)):
        missing.append("native bf16 on CUDA (compute capability 8.0 or newer; "
                       + (f"found {'.'.join(map(str, torch.cuda.get_device_capability()))})" if gpus
                          else "no CUDA GPU)"))
    absent = [name for name in packages if importlib.util.find_spec(name.split(".")[0]) is None]
    if absent:
        missing.append(f"package{'s' if len(absent) > 1 else ''} {', '.join(absent)} (not installed)")
    reason = "needs " + "; ".join(missing) if missing else "has what it needs"
    return pytest.mark.skipif(bool(missing), reason=reason)


def main_py(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python main.py ...`` in a subprocess from the repository root (DDP launches its ranks by running the
    command again), offline W&B; fails the test with the end of stderr unless it succeeds."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@contextmanager
def tmpfs_mounted(target: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs with ``options`` (``size=1m``, ``ro``, ...) on ``target``; yields whether it mounted (root
    only), and unmounts it afterwards."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture(autouse=True)
def _messages_on_rank_zero_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool's entry point (``dsum score``, ``dsum sweep``) switches its process to messages on every rank
    (:func:`dsum.infra.log.every_rank`); in the test process that must not outlive the test that ran it."""
    import dsum.infra.log

    monkeypatch.setattr(dsum.infra.log, "_EVERY_RANK", False)

