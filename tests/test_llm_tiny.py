"""The tiny Llama-style chat LLM of ``python -m dsum.tiny`` (dsum/tiny/llm.py)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoTokenizer

from dsum.tiny import build as tiny
from dsum.tiny.llm import build_tiny_llm
from tests.conftest import SAMPLE


def test_tiny_llm_is_a_chatml_llama_without_the_masks(tiny_llm_random) -> None:
    config = AutoConfig.from_pretrained(tiny_llm_random)
    assert config.model_type == "llama" and config.tie_word_embeddings is False
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    tok = AutoTokenizer.from_pretrained(tiny_llm_random)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = tok.apply_chat_template([{"role": "user", "content": "안녕"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_start|>") in tok.all_special_ids
    assert "#Person1#" not in tok.get_added_vocab()  # like a real LLM: dsum adds the masks
    assert tok.decode(tok("#Person1#: 안녕하세요\n#Person2#: 네", add_special_tokens=False)["input_ids"]) == (
        "#Person1#: 안녕하세요\n#Person2#: 네")


def test_pretraining_lowers_the_loss_and_is_recorded(tmp_path) -> None:
    out = build_tiny_llm(tmp_path / "llm", SAMPLE / "train.csv", d_model=32, layers=1, vocab_size=1000,
                         pretrain_steps=15, block_size=32, batch_size=4, learning_rate=1e-2)
    record = json.loads((out / "pretraining.json").read_text())
    assert record["pretrain_steps"] == 15
    assert record["last_loss"] < record["first_loss"] - 0.5, record
    with pytest.raises(ValueError, match="heads must be even"):
        build_tiny_llm(tmp_path / "bad", SAMPLE / "train.csv", d_model=30, heads=3)


def test_cli_builds_the_llm_family(tmp_path) -> None:
    tiny.main(csv=str(SAMPLE / "train.csv"), out=str(tmp_path), families="llm", d_model=32, layers=1,
              vocab_size=1000, pretrain_steps=0)
    assert [p.name for p in tmp_path.iterdir()] == ["llm"]
    assert AutoConfig.from_pretrained(tmp_path / "llm").hidden_size == 32
    assert json.loads((tmp_path / "llm" / "pretraining.json").read_text())["first_loss"] is None
