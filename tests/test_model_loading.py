"""How models are loaded: trained weights in float32 whatever the checkpoint's dtype (GradScaler works on fp16
checkpoints), the quantized base on Lightning's device, no deprecated checkpointing call, and one-line errors for an
adapter whose base is gone or whose weights are truncated."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from dsum.infra.faults import fatal_message
from dsum.models import CausalLMSummarizer, InstructSummarizer, Seq2SeqSummarizer
from dsum.models.instruct import LoraSettings

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def save_in(dtype: torch.dtype, source: Path, out: Path, loader: Any) -> Path:
    """The checkpoint ``source`` saved again with every weight in ``dtype`` (a bf16 Qwen, an fp16 checkpoint)."""
    loader.from_pretrained(source).to(dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def dtypes(module: torch.nn.Module, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.requires_grad == trainable}


@pytest.mark.parametrize("half", list(HALF))
@pytest.mark.parametrize("family", ["bart", "t5", "gpt2", "llm"])
def test_fully_fine_tuned_weights_are_float32_whatever_the_checkpoint_dtype(family, half, tiny_models,
                                                                          tiny_llm_random, tmp_path) -> None:
    """transformers 5 keeps a checkpoint's saved dtype: a bf16 base would be trained without fp32 master weights."""
    source = tiny_llm_random if family == "llm" else tiny_models[family]
    loader = AutoModelForSeq2SeqLM if family in ("bart", "t5") else AutoModelForCausalLM
    path = str(save_in(HALF[half], source, tmp_path / family, loader))
    options = {"rouge_tokenizer": "whitespace"}
    module = (Seq2SeqSummarizer(path, **options) if family in ("bart", "t5") else CausalLMSummarizer(path, **options)
              if family == "gpt2" else InstructSummarizer(path, lora=None, **options))
    assert dtypes(module, trainable=True) == {torch.float32}


@pytest.mark.parametrize("half", list(HALF))
def test_lora_keeps_the_frozen_base_half_and_trains_a_float32_adapter(half, tiny_llm_random, tmp_path) -> None:
    path = save_in(HALF[half], tiny_llm_random, tmp_path / "llm", AutoModelForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["#Person1#"]}, replace_extra_special_tokens=False)
    module = InstructSummarizer(str(path), tokenizer=tokenizer, lora=LoraSettings(r=4), rouge_tokenizer="whitespace")
    assert dtypes(module, trainable=False) == {HALF[half]}
    assert dtypes(module, trainable=True) == {torch.float32}  # LoRA matrices and the new mask's token rows
    ids = torch.tensor([[5, 6, tokenizer.convert_tokens_to_ids("#Person1#"), 7]])
    module.model(input_ids=ids, labels=ids).loss.backward()
    # Its export, continued (model.lora is then unused): the same split.
    again = InstructSummarizer(str(module.export(tmp_path / "adapter")), lora=None, rouge_tokenizer="whitespace")
    assert again.adapter_only
    assert dtypes(again, trainable=False) == {HALF[half]} and dtypes(again, trainable=True) == {torch.float32}


def test_an_fp16_checkpoint_trains_under_a_grad_scaler(tiny_models, tmp_path) -> None:
    """16-mixed with clipping unscales the gradients: on fp16 weights that raised "Attempting to unscale FP16
    gradients"."""
    path = save_in(torch.float16, tiny_models["bart"], tmp_path / "bart", AutoModelForSeq2SeqLM)
    module = Seq2SeqSummarizer(str(path), rouge_tokenizer="whitespace")
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    scaler.scale(module.model(input_ids=ids, labels=ids).loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()


class _CapturingLoader:
    """Stands in for ``AutoModelForCausalLM``: records the ``from_pretrained`` arguments and loads the model
    unquantized (no bitsandbytes, no GPU here)."""

    calls: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any):
        cls.calls.append(kwargs)
        return AutoModelForCausalLM.from_pretrained(name, dtype=kwargs.get("dtype"))


def test_quantized_base_goes_to_lightnings_root_device_under_slurm(tiny_llm_random, monkeypatch) -> None:
    """Under srun LOCAL_RANK is unset (Lightning reads SLURM_LOCALID), and with --trainer.devices=[2,3] local rank 1
    is cuda:3: the 4-bit base must load there, not on cuda:0."""
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy
    from types import SimpleNamespace

    import dsum.models.instruct as instruct

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for key, value in {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "dsum", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
                       "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(instruct, "check_bitsandbytes", lambda *args: None)  # no CUDA or bitsandbytes on CPU CI
    monkeypatch.setattr(instruct, "AutoModelForCausalLM", _CapturingLoader)
    _CapturingLoader.calls = []
    module = InstructSummarizer(str(tiny_llm_random), quantization="nf4", rouge_tokenizer="whitespace")
    strategy = DDPStrategy(parallel_devices=[torch.device("cuda", 2), torch.device("cuda", 3)],
                           cluster_environment=SLURMEnvironment())
    assert strategy.root_device == torch.device("cuda", 3)
    module._trainer = SimpleNamespace(strategy=strategy)
    module.configure_model()
    assert [call["device_map"] for call in _CapturingLoader.calls] == [{"": 3}]
    assert _CapturingLoader.calls[0]["dtype"] == torch.bfloat16  # the compute dtype
    assert module.adapter_only and module.parameter_counts[0] > 0
    module.configure_model()  # Lightning calls it in every stage: loaded once
    assert len(_CapturingLoader.calls) == 1


def test_activation_checkpointing_uses_no_deprecated_call(tiny_llm_random) -> None:
    for lora in (LoraSettings(r=4), None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = InstructSummarizer(str(tiny_llm_random), lora=lora, gradient_checkpointing=True,
                                        rouge_tokenizer="whitespace")
        deprecated = [str(w.message) for w in caught if "deprecated" in str(w.message).lower()]
        assert deprecated == []
        assert module._base().is_activation_checkpointing


@pytest.fixture()
def adapter_export(tiny_llm_random, tmp_path) -> Path:
    """A LoRA adapter export whose base is a copy of the tiny LLM in ``tmp_path / "base"``."""
    base = shutil.copytree(tiny_llm_random, tmp_path / "base")
    module = InstructSummarizer(str(base), lora=LoraSettings(r=4), rouge_tokenizer="whitespace")
    return module.export(tmp_path / "adapter")


def test_an_adapter_whose_base_is_gone_says_so_and_names_it(adapter_export, tmp_path) -> None:
    shutil.rmtree(tmp_path / "base")
    with pytest.raises(FileNotFoundError) as error:
        InstructSummarizer(str(adapter_export), rouge_tokenizer="whitespace")
    line = fatal_message(error.value)
    assert line is not None and "\n" not in line
    assert f"base model of adapter {adapter_export} is missing: {(tmp_path / 'base').resolve()}" in line


def test_a_truncated_adapter_file_is_one_line_naming_it(adapter_export) -> None:
    weights = adapter_export / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError) as error:
        InstructSummarizer(str(adapter_export), rouge_tokenizer="whitespace")
    line = fatal_message(error.value)
    assert line is not None and "\n" not in line
    assert f"{weights} is damaged or truncated" in line


def test_a_family_without_an_auto_class_must_load_its_own_model() -> None:
    from dsum.models.base import SummarizerBase

    class Bare:
        auto_class = None

    with pytest.raises(TypeError, match="Bare sets no auto_class and does not override load_model"):
        SummarizerBase.load_model(Bare(), "any", trust_remote_code=False)
    assert Seq2SeqSummarizer.auto_class is AutoModelForSeq2SeqLM
    assert CausalLMSummarizer.auto_class is AutoModelForCausalLM
