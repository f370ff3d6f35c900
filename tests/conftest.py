"""Shared fixtures: the bundled sample, tiny offline models built once per session, offline W&B."""

from __future__ import annotations

import os
from collections.abc import Callable
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
    from dsum.tiny import build_all

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
    from dsum.tiny_llm import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "llm", [SAMPLE / "train.csv"])


@pytest.fixture(scope="session")
def tiny_llm_random(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller tiny chat LLM with random weights (no pre-training): for fast tests of the mechanics."""
    from dsum.tiny_llm import build_tiny_llm

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
