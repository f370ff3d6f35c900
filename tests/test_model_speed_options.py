"""model.attn_implementation reaches from_pretrained; model.compile compiles each transformer layer once."""

from __future__ import annotations

import pytest

from dsum.models import CausalLMSummarizer, Seq2SeqSummarizer
from dsum.models.base import compile_layers


@pytest.mark.parametrize(("family", "cls"), [("bart", Seq2SeqSummarizer), ("gpt2", CausalLMSummarizer)])
def test_attn_implementation_is_passed_to_from_pretrained(tiny_models, family, cls):
    module = cls(pretrained=str(tiny_models[family]), attn_implementation="eager", rouge_tokenizer="whitespace")
    assert module.model.config._attn_implementation == "eager"
    default = cls(pretrained=str(tiny_models[family]), rouge_tokenizer="whitespace")
    assert default.model.config._attn_implementation == "sdpa"  # transformers 5's choice, kept when unset


def test_compile_wraps_every_encoder_and_decoder_layer_once(tiny_models):
    module = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]), compile=True, rouge_tokenizer="whitespace")
    layers = [*module.model.model.encoder.layers, *module.model.model.decoder.layers]
    assert not any(layer._compiled_call_impl for layer in layers)  # nothing before Lightning configures the model
    module.configure_model()
    module.configure_model()  # a second call (fit, then validate) does not wrap twice
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert module.model.lm_head._compiled_call_impl is None  # the gathered head stays eager
    assert compile_layers(module.model.model.encoder) == len(module.model.model.encoder.layers)


def test_generation_runs_compiled_layers_eagerly(tiny_models):
    import torch

    module = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]), compile=True, rouge_tokenizer="whitespace")
    stances = []

    def record(batch):
        stances.append(torch._dynamo.eval_frame._stance.stance)
        return torch.zeros(1, 1, dtype=torch.long)

    module.generate_ids = record
    module._generate({})
    module.configure_model()
    module._generate({})  # a decoding step's growing cache would recompile the layers at every step
    assert stances == ["default", "force_eager"]
