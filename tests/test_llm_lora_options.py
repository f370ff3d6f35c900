"""The LoRA options of TRL / LLaMA-Factory users as typed settings: DoRA, rsLoRA, PiSSA / OLoRA / LoftQ
initialisation, LoRA+ and NEFTune. Each reaches peft (and the exported adapter_config.json) and trains."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dsum.models import InstructSummarizer, LoraSettings
from tests.conftest import run_if
from tests.test_llm_lora import short_fit


@pytest.mark.parametrize("option, config_key, expected", [
    ("--model.lora.use_dora=true", "use_dora", True),
    ("--model.lora.use_rslora=true", "use_rslora", True),
    ("--model.lora.init=pissa", "init_lora_weights", "pissa"),
    ("--model.lora.init=olora", "init_lora_weights", "olora"),
    ("--model.lora.init=gaussian", "init_lora_weights", "gaussian"),
])
def test_each_option_reaches_peft_trains_and_is_exported(option, config_key, expected, tiny_llm_random,
                                                        tmp_path) -> None:
    run_dir = tmp_path / "run"
    cli = short_fit(tiny_llm_random, run_dir, option, "--model.learning_rate=0.01")
    assert cli.trainer.global_step == 2
    exported = json.loads((run_dir / "best_model" / "adapter_config.json").read_text())
    assert exported[config_key] == expected
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


@run_if(packages=["scipy"])
def test_loftq_initialises_from_an_unquantized_base(tiny_llm_random, tmp_path) -> None:
    module = InstructSummarizer(str(tiny_llm_random), lora=LoraSettings(init="loftq", r=4),
                                rouge_tokenizer="whitespace")
    config = module.model.peft_config["default"]
    assert config.init_lora_weights == "loftq" and config.loftq_config["loftq_bits"] == 4


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate(tiny_llm_random) -> None:
    module = InstructSummarizer(str(tiny_llm_random), lora=LoraSettings(plus_lr_ratio=16), learning_rate=1e-4,
                                rouge_tokenizer="whitespace")
    groups = module.parameter_groups()
    b_names = {n for n, _ in module.named_parameters() if ".lora_B." in n}
    fast = [g for g in groups if g.get("lr") == pytest.approx(1.6e-3)]
    assert fast and {id(p) for g in fast for p in g["params"]} == \
        {id(p) for n, p in module.named_parameters() if n in b_names}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable  # every trainable weight, once
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_neftune_noise_applies_in_training_only(tiny_llm_random) -> None:
    module = InstructSummarizer(str(tiny_llm_random), neftune_alpha=5.0, rouge_tokenizer="whitespace")
    embeddings = module.model.get_base_model().get_input_embeddings()
    ids = torch.tensor([[5, 6, 7, 8]])
    module.eval()
    clean = embeddings(ids)
    assert torch.equal(embeddings(ids), clean)  # no noise in validation or prediction
    module.train()
    noisy = embeddings(ids)
    bound = 5.0 / (4 * clean.shape[-1]) ** 0.5
    assert not torch.equal(noisy, clean) and float((noisy - clean).abs().max()) <= bound + 1e-6


@pytest.mark.parametrize("setting, message", [
    ({"neftune_alpha": -1.0}, "model.neftune_alpha must be a positive number, got -1.0"),
    ({"lora": LoraSettings(plus_lr_ratio=0.0)}, "model.lora.plus_lr_ratio must be a positive number, got 0.0"),
    pytest.param({"lora": LoraSettings(init="loftq")}, "model.lora.init=loftq needs scipy",
                 marks=pytest.mark.skipif(importlib.util.find_spec("scipy") is not None, reason="scipy is installed")),
])
def test_bad_option_values_name_the_key(setting, message, tiny_llm_random) -> None:
    with pytest.raises(ValueError, match=message):
        InstructSummarizer(str(tiny_llm_random), rouge_tokenizer="whitespace", **setting)


def test_sweep_aliases_reach_the_options() -> None:
    from dsum.sweep.mapping import ALIASES

    assert {name: ALIASES[name].key for name in ("lora_dora", "lora_rslora", "lora_init", "lora_plus_ratio",
                                                   "neftune_alpha")} == {
        "lora_dora": "model.lora.use_dora", "lora_rslora": "model.lora.use_rslora", "lora_init": "model.lora.init",
        "lora_plus_ratio": "model.lora.plus_lr_ratio", "neftune_alpha": "model.neftune_alpha"}
