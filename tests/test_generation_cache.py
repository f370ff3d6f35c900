"""Beam search with one cross-attention cache, and evaluation's shared encoder pass: same ids, less work."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from dsum.data import DialogueDataModule
from dsum.models import Seq2SeqSummarizer
from dsum.models.base import GenerationSettings
from dsum.models.generation import BeamSharedCrossAttentionCache, generation_cache
from tests.conftest import SAMPLE

BEAMS = {"num_beams": 4, "no_repeat_ngram_size": 2, "max_new_tokens": 24, "early_stopping": True}


def _batch(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_shared_cross_attention_cache_generates_the_same_ids(tiny_models, family):
    path = tiny_models[family]
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Different lengths, so padding and beams of unequal histories are both exercised.
    texts = ["안녕하세요 오늘 회의는 세 시에 시작합니다", "네",
             "내일 다시 연락 드릴게요 감사합니다 좋은 하루", "점심 메뉴는 무엇으로 할까요"]
    batch = _batch(tokenizer, texts)
    torch.manual_seed(0)
    reference = model.generate(**batch, **BEAMS)
    kwargs = generation_cache(model, BEAMS["num_beams"])
    assert isinstance(kwargs["cache"], BeamSharedCrossAttentionCache)
    shared = model.generate(**batch, **BEAMS, **kwargs)
    assert torch.equal(shared, reference)
    # Beam search really reordered beams here: otherwise the test could not tell the caches apart.
    greedy = model.generate(**batch, num_beams=1, max_new_tokens=24, no_repeat_ngram_size=2)
    assert not torch.equal(greedy[:, : reference.shape[1]], reference[:, : greedy.shape[1]])


def test_generation_cache_only_for_encoder_decoder_beam_search(tiny_models):
    bart = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["bart"])
    assert generation_cache(bart, 1) == {}
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    assert generation_cache(gpt2, 4) == {}
    bart.generation_config.cache_implementation = "static"
    assert generation_cache(bart, 4) == {}


def test_evaluation_encodes_each_batch_once_and_generates_as_before(tiny_models, tmp_path):
    dm = DialogueDataModule(
        tokenizer_name=str(tiny_models["bart"]), val_file=str(SAMPLE / "dev.csv"), eval_batch_size=8,
        encoder_max_len=128, decoder_max_len=48, cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    module = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]), tokenizer=dm.tokenizer,
                               generation=GenerationSettings(num_beams=3, max_new_tokens=16),
                               rouge_tokenizer="whitespace").eval()
    calls = []
    module.model.get_encoder().register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        alone = module.generate_ids(batch)  # no loss pass before: generate encodes itself
        assert len(calls) == 1
        module.example_losses(batch)
        after_loss = module.generate_ids(batch)
        assert len(calls) == 2  # the loss pass encoded; generation reused it
        other = {**batch, "input_ids": batch["input_ids"].clone()}
        module.example_losses(batch)
        module.generate_ids(other)  # another batch: its own encoder pass
        assert len(calls) == 4
    assert torch.equal(after_loss, alone)
    # Training (gradients on) keeps nothing for generation.
    module.train()
    module.example_losses(batch)
    assert module._encoded is None
