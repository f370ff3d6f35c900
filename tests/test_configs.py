"""Every shipped config parses; values that would fail late fail at start with the key name."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
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
    assert resolved["model"]["class_path"] in {
        "dsum.models.Seq2SeqSummarizer", "dsum.models.CausalLMSummarizer", "dsum.models.InstructSummarizer"}
    assert resolved["checkpoint"]["monitor"] == "val/rouge_mean"
    assert resolved["trainer"]["default_root_dir"].startswith("outputs/")
    assert resolved["trainer"]["devices"] == 1  # never every visible GPU by default (DDP only when asked)
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


# ------------------------------------------------------------------------- every shipped config, instantiated
# Each config's model family, and so its tiny stand-in (tests/conftest.py `tiny_models`). A new config must be added.
FAMILY = {"kobart": "bart", "kogpt2": "gpt2", "pko-t5": "t5", "mt5": "t5", "quickstart": "bart",
          "quickstart-t5": "t5", "quickstart-gpt2": "gpt2", "quickstart-llm": "llm", "qwen2.5-1.5b-lora": "llm",
          "solar-qlora": "llm"}
HALF_PRECISION = {"16-mixed", "16", "16-true"}  # needs a GPU; bf16-mixed stands in on CPU
# Settings bitsandbytes runs on CUDA only: replaced on CPU, kept in the GPU variant.
CUDA_ONLY = {"solar-qlora": ["--model.quantization=null", "--model.optimizer=adamw"]}


@pytest.fixture()
def stand_ins(tiny_models, request) -> dict[str, Path]:
    """The tiny stand-in of every family (the LLM one only when a test asks for it: it takes a while to build)."""
    config = request.node.callspec.params["config"]
    return {**tiny_models, "llm": request.getfixturevalue("tiny_llm_random")} if FAMILY[config.stem] == "llm" else tiny_models


def test_every_shipped_config_has_a_tiny_stand_in() -> None:
    assert sorted(FAMILY) == sorted(c.stem for c in CONFIGS)


def shipped(config: Path) -> dict:
    return yaml.safe_load(config.read_text(encoding="utf-8"))


def fit_positions(config: Path, limit: int = 1024) -> list[str]:
    """A decoder-only prompt + summary longer than the stand-in's 1,024 positions (real LLMs have more): the
    prompt is shortened to fit; every other setting stays the config's."""
    data = shipped(config)["data"]
    encoder, decoder = data.get("encoder_max_len", 512), data.get("decoder_max_len", 100)
    if FAMILY[config.stem] in ("gpt2", "llm") and encoder + decoder > limit:
        return [f"--data.encoder_max_len={limit - decoder}"]
    return []


def run_config(config: Path, tiny: Path, tmp_path: Path, precision: str, *extra: str) -> tuple[DsumCLI, Path]:
    """Two optimizer steps of ``fit`` with the config's own settings (optimizer, schedule, precision, gradient
    accumulation and clipping, tokenizer loading, affixes, lengths, LoRA, generation), its model swapped to the tiny
    stand-in, its data to the sample and its batches to 4 rows; then a ``predict`` batch on the exported model."""
    run_dir = tmp_path / "run"
    predict_file = tmp_path / "predict.csv"  # one predict batch: the first 4 rows of the sample's test.csv
    pd.read_csv(SAMPLE / "test.csv").head(4).to_csv(predict_file, index=False)
    data = [f"--data.train_file={SAMPLE / 'train.csv'}", f"--data.val_file={SAMPLE / 'dev.csv'}",
            f"--data.predict_file={predict_file}", f"--data.cache_dir={tmp_path / 'cache'}", "--data.test_file=null"]
    common = ["--config", str(config), *data, f"--trainer.default_root_dir={run_dir}", "--trainer.logger=false",
              f"--trainer.precision={precision}", "--model.generation.max_new_tokens=4", *extra]
    accumulate = shipped(config)["trainer"].get("accumulate_grad_batches", 1)
    fit = DsumCLI(args=["fit", *common, f"--model.pretrained={tiny}", f"--trainer.limit_train_batches={2 * accumulate}",
                        "--trainer.max_epochs=1", "--trainer.limit_val_batches=1", "--data.val_subset=4",
                        "--data.batch_size=4", "--data.eval_batch_size=4"])
    submission = tmp_path / "submission.csv"
    DsumCLI(args=["predict", *common, f"--model.pretrained={run_dir / 'best_model'}", "--data.eval_batch_size=4",
                  f"--submission.path={submission}"])
    return fit, submission


def check_run(config: Path, fit: DsumCLI, submission: Path, precision: str) -> None:
    settings = shipped(config)
    init = settings["model"]["init_args"]
    for override in fit_positions(config):  # --data.encoder_max_len=N
        key, value = override.removeprefix("--data.").split("=")
        settings["data"][key] = int(value)
    record = json.loads((Path(fit.trainer.default_root_dir) / "run.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 2 == fit.trainer.global_step
    assert math.isfinite(record["final_metrics"]["val/loss"])
    assert fit.trainer.precision == precision
    optimizer = fit.trainer.optimizers[0]
    expected = {"adamw": "AdamW", "adafactor": "Adafactor", "paged_adamw_8bit": "PagedAdamW8bit"}[
        fit.model.hparams.get("optimizer", "adamw")]
    assert type(optimizer).__name__ == expected
    assert fit.model.hparams.learning_rate == pytest.approx(init.get("learning_rate", fit.model.hparams.learning_rate))
    # Links: the data's affixes and lengths reached the model; the tokenizer is the data module's.
    data = settings["data"]
    assert fit.model.tokenizer is fit.datamodule.tokenizer
    layout = fit.config["fit"]["model"]["init_args"]["input_layout"]
    for name in ("source_prefix", "source_suffix", "encoder_max_len", "decoder_max_len"):
        assert getattr(fit.datamodule, name) == data.get(name, getattr(fit.datamodule, name)), name
        assert layout[name] == getattr(fit.datamodule, name), name  # the link carried it to the model
    for token, value in (data.get("tokenizer_kwargs") or {}).items():
        assert getattr(fit.datamodule.tokenizer, token) == value, token  # tokenizer_kwargs applied
    lines = submission.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",fname,summary" and len(lines) == 1 + 4  # one predict batch of 4


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_trains_and_predicts(config: Path, stand_ins, tmp_path) -> None:
    precision = str(shipped(config)["trainer"].get("precision", "32-true"))
    if precision in HALF_PRECISION:  # fp16 autocast cannot run on CPU
        precision = "bf16-mixed"
    fit, submission = run_config(config, stand_ins[FAMILY[config.stem]], tmp_path, precision,
                                 *CUDA_ONLY.get(config.stem, []), *fit_positions(config))
    check_run(config, fit, submission, precision)


GPU_ONLY = [c for c in CONFIGS
            if str(shipped(c)["trainer"].get("precision")) in HALF_PRECISION or c.stem in CUDA_ONLY]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed and bitsandbytes need a GPU")
@pytest.mark.parametrize("config", GPU_ONLY, ids=[c.stem for c in GPU_ONLY])
def test_gpu_settings_of_shipped_configs_train_on_gpu(config: Path, stand_ins, tmp_path) -> None:
    if config.stem in CUDA_ONLY:
        pytest.importorskip("bitsandbytes")  # an optional extra: dsum[qlora]
    precision = str(shipped(config)["trainer"]["precision"])
    fit, submission = run_config(config, stand_ins[FAMILY[config.stem]], tmp_path, precision, *fit_positions(config))
    check_run(config, fit, submission, precision)
    assert fit.trainer.strategy.root_device.type == "cuda"
