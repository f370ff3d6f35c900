"""Model settings read from the checkpoint: where generation stops, how long inputs may be."""

from __future__ import annotations

from dsum.models import CausalLMSummarizer, Seq2SeqSummarizer


def test_generation_stops_at_the_tokenizers_eos_too(tiny_models) -> None:
    module = CausalLMSummarizer(pretrained=str(tiny_models["gpt2"]))
    eos = module.tokenizer.eos_token_id
    assert module.generation_config().eos_token_id == eos  # the checkpoint agrees: one id
    # A checkpoint whose config keeps GPT-2's 50256 while its tokenizer's eos (which ends every label) differs.
    module.model.generation_config.eos_token_id = 50256
    assert module.generation_config().eos_token_id == [50256, eos]
    module.model.generation_config.eos_token_id = [7, eos]
    assert module.generation_config().eos_token_id == [7, eos]


def test_t5_has_no_position_limit_even_with_a_legacy_n_positions(tiny_models) -> None:
    t5 = Seq2SeqSummarizer(pretrained=str(tiny_models["t5"]))
    t5.model.config.n_positions = 512  # what older T5 config.json files carry
    assert t5.position_limit() is None
    bart = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]))
    assert bart.position_limit() == bart.model.config.max_position_embeddings


def test_decoded_summaries_are_one_line(tiny_models) -> None:
    module = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]))
    ids = module.tokenizer(["#Person1#은\n집에  갔다.\t"], return_tensors="pt")["input_ids"]
    assert module.decode(ids) == ["#Person1#은 집에 갔다."]  # a newline would split the submission's CSV field


def test_decoder_only_generation_must_fit_the_positions_too(tiny_models) -> None:
    import pytest

    from dsum.models.base import GenerationSettings, InputLayout

    limit = CausalLMSummarizer(pretrained=str(tiny_models["gpt2"])).position_limit()
    fits = InputLayout(encoder_max_len=limit - 100, decoder_max_len=64, source_suffix="\n요약: ")
    # Prompt + 100 generated tokens (the default max_new_tokens) fit exactly.
    CausalLMSummarizer(pretrained=str(tiny_models["gpt2"]), input_layout=fits)
    with pytest.raises(ValueError, match=r"data\.encoder_max_len=\d+ \+ model\.generation\.max_new_tokens=101 exceeds"):
        CausalLMSummarizer(pretrained=str(tiny_models["gpt2"]), input_layout=fits,
                           generation=GenerationSettings(max_new_tokens=101))
    # An encoder-decoder model's summary has its own positions.
    Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]), generation=GenerationSettings(max_new_tokens=5000),
                      input_layout=InputLayout(encoder_max_len=512))
