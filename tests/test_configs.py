"""Every shipped config parses; values that would fail late fail at start with the key name."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from dsum.cli import DsumCLI
from tests.conftest import REPO, SAMPLE

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_parses(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        DsumCLI(args=["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"] in {"dsum.models.Seq2SeqSummarizer", "dsum.models.CausalLMSummarizer"}
    assert resolved["checkpoint"]["monitor"] == "val/rouge_mean"
    assert resolved["trainer"]["default_root_dir"].startswith("outputs/")
    if resolved["model"]["class_path"].endswith("CausalLMSummarizer"):
        assert resolved["data"]["source_suffix"]


def test_help_documents_options(capsys) -> None:
    with pytest.raises(SystemExit):
        DsumCLI(args=["fit", "--model=dsum.models.Seq2SeqSummarizer", "--model.help=dsum.models.Seq2SeqSummarizer"])
    text = capsys.readouterr().out
    assert "--model.learning_rate" in text and "Peak learning rate" in text
    assert "--model.generation.num_beams" in text and "Beam width" in text


def fit_args(tiny: Path, tmp_path: Path, config: str = "quickstart.yaml", *extra: str) -> list[str]:
    return [
        "fit", "--config", str(REPO / "configs" / config), f"--model.pretrained={tiny}",
        f"--trainer.default_root_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train_file={SAMPLE / 'train.csv'}", f"--data.val_file={SAMPLE / 'dev.csv'}",
        "--trainer.logger=false", "--trainer.max_steps=1", "--data.val_subset=2",
        "--model.generation.max_new_tokens=2", *extra,
    ]


def test_max_length_above_position_limit_fails_at_start(tiny_models, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"data\.encoder_max_len=2000 exceeds the model's position limit 1024"):
        DsumCLI(args=fit_args(tiny_models["bart"], tmp_path, "quickstart.yaml", "--data.encoder_max_len=2000"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_decoder_only_prompt_plus_summary_must_fit(tiny_models, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"data\.encoder_max_len=1000 \+ data\.decoder_max_len=64 exceeds"):
        DsumCLI(args=fit_args(tiny_models["gpt2"], tmp_path, "quickstart-gpt2.yaml", "--data.encoder_max_len=1000"))


def test_decoder_only_without_separator_is_an_error(tiny_models, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"set data\.source_suffix"):
        DsumCLI(args=fit_args(tiny_models["gpt2"], tmp_path, "quickstart-gpt2.yaml", "--data.source_suffix="))


def test_t5_without_prefix_warns(tiny_models, tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DsumCLI(args=fit_args(tiny_models["t5"], tmp_path, "quickstart-t5.yaml", "--data.source_prefix="))
    assert any("data.source_prefix is empty" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--data.batch_size=0", r"data\.batch_size must be a positive integer, got 0"),
        ("--data.max_tokens=0", r"data\.max_tokens must be a positive integer, got 0"),
        ("--model.learning_rate=-1", r"model\.learning_rate=-1\.0 is out of range"),
        ("--model.generation.num_beams=0", r"model\.generation\.num_beams=0 is out of range"),
    ],
)
def test_bad_values_name_the_key(tiny_models, tmp_path, override: str, message: str) -> None:
    with pytest.raises((ValueError, SystemExit)) as err:
        DsumCLI(args=fit_args(tiny_models["bart"], tmp_path, "quickstart.yaml", override))
    text = str(err.value) if isinstance(err.value, ValueError) else str(err.value.__context__)
    assert __import__("re").search(message, text), text
