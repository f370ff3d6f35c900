"""Packing for the decoder-only families: examples laid end to end in rows, with position ids restarting per
example and no attention across them (transformers' block-diagonal mask from the position ids)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsum.data import DialogueDataModule
from dsum.models import CausalLMSummarizer, InstructSummarizer
from dsum.models.causal import pack_in_order
from tests.conftest import SAMPLE


def test_sequences_are_packed_in_order_without_crossing_rows() -> None:
    assert pack_in_order([5, 3, 2, 6, 4], width=8) == [(0, 0), (0, 5), (1, 0), (1, 2), (2, 0)]
    assert pack_in_order([4, 4, 4], width=8) == [(0, 0), (0, 4), (1, 0)]
    with pytest.raises(ValueError, match="a sequence of 9 tokens does not fit a packed row of 8"):
        pack_in_order([9], width=8)


def module_and_batch(family: str, tiny: Path, tmp_path: Path) -> tuple[torch.nn.Module, dict]:
    prompt = {"data.prompt_template": "chat"} if family == "llm" else {"data.source_suffix": "\n요약: "}
    data = DialogueDataModule(tokenizer_name=str(tiny), train_file=str(SAMPLE / "train.csv"),
                              val_file=str(SAMPLE / "dev.csv"), batch_size=12, batching="random",
                              cache_dir=str(tmp_path / "cache"), decoder_only=True, encoder_max_len=256,
                              decoder_max_len=64, source_suffix=prompt.get("data.source_suffix", ""),
                              prompt_template=prompt.get("data.prompt_template"))
    data.setup("fit")
    model_class = InstructSummarizer if family == "llm" else CausalLMSummarizer
    module = model_class(str(tiny), tokenizer=data.tokenizer, packing=True, rouge_tokenizer="whitespace")
    for layer in module.modules():  # no dropout: the two layouts must compute the same function
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    # The longest example and the shortest ones: with rows as wide as the longest, the short ones share rows.
    loader = data.train_dataloader()
    features = loader.dataset
    by_length = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]) + len(features[i]["labels"]))
    chosen = [by_length[-1], *by_length[:7]]
    return module, loader.collate_fn([features[i] for i in chosen])


@pytest.mark.parametrize("family", ["gpt2", "llm"])
def test_packed_per_example_losses_equal_unpacked(family, tiny_models, tiny_llm_random, tmp_path) -> None:
    module, batch = module_and_batch(family, tiny_llm_random if family == "llm" else tiny_models[family], tmp_path)
    module.train()
    packed_totals, packed_counts = module.example_losses(batch)
    module.packing = False
    totals, counts = module.example_losses(batch)
    assert torch.equal(packed_counts, counts)
    torch.testing.assert_close(packed_totals, totals, rtol=1e-4, atol=1e-4)

    # The packed rows really hold several examples each (else the test would compare padding with padding).
    module.packing = True
    seen = {}

    def count_rows(layer, args, kwargs):
        seen["rows"], seen["positions"] = kwargs["input_ids"].shape[0], kwargs.get("position_ids")

    handle = module.model.register_forward_pre_hook(count_rows, with_kwargs=True)
    module.example_losses(batch)
    handle.remove()
    assert seen["rows"] < len(batch["index"]) and seen["positions"] is not None
    assert int((seen["positions"] == 0).sum()) >= len(batch["index"])  # positions restart for every example


def test_evaluation_is_never_packed(tiny_models, tmp_path) -> None:
    module, batch = module_and_batch("gpt2", tiny_models["gpt2"], tmp_path)
    module.eval()
    rows = {}

    def count_rows(layer, args, kwargs) -> None:
        rows["n"] = kwargs["input_ids"].shape[0]

    handle = module.model.register_forward_pre_hook(count_rows, with_kwargs=True)
    module.example_losses(batch)
    handle.remove()
    assert rows["n"] == len(batch["index"])
