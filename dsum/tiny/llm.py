"""A tiny Llama-style instruction LLM with a chat template, built offline from a dialogue CSV.

:func:`build_tiny_llm` writes a ``LlamaForCausalLM`` checkpoint (GQA, untied head) with a byte-fallback BPE
tokenizer trained on the CSV's text and a Qwen2-Instruct-style ChatML template: ``<|im_end|>`` is eos and
end-of-turn, ``<|endoftext|>`` pads. Like a real LLM's, the tokenizer does not know the data's masks: dsum adds them.

A random base gives LoRA nothing to adapt, so the model is briefly pre-trained (about 25 s on 2 CPU cores): language
modelling on every dialogue as a lone user turn and every summary as a lone assistant turn, never the two paired.
So it knows the language, the chat markup and when a turn ends, but not the task.

Example:
    python -m dsum.tiny --csv data/sample/train.csv --out tiny_models --families llm
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from transformers import PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from dsum.tiny.tokenizer_training import SPECIALS, as_paths, read_texts, train_backend

LLM_FAMILY = "llm"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as Qwen2-Instruct uses it (without Qwen's default system message)."""

IM_START = "<|im_start|>"

PRETRAIN_STEPS = 400
"""Default pre-training steps. LoRA on the sample (configs/quickstart-llm.yaml) scored, in whitespace ROUGE on dev
against 22.9 for the best constant summary: 24.0 after 150 steps, 49.8 after 300, 55.1 after 400."""


def build_llm_tokenizer(
    csv_paths: str | Path | Sequence[str | Path], vocab_size: int = 2000, max_positions: int = 1024
) -> PreTrainedTokenizerFast:
    """A byte-fallback BPE tokenizer with ChatML special tokens and chat template, trained on the CSVs' text
    (``vocab_size`` includes special and byte tokens; ``max_positions`` is saved as ``model_max_length``)."""
    backend = train_backend(LLM_FAMILY, read_texts(csv_paths), [IM_START], vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        **SPECIALS[LLM_FAMILY],
    )


def pretraining_documents(csv_paths: str | Path | Sequence[str | Path], seed: int) -> list[str]:
    """The CSVs' dialogues as lone user turns and summaries as lone assistant turns (ChatML), shuffled."""
    documents = []
    for path in as_paths(csv_paths):
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
        for column, role in (("dialogue", "user"), ("summary", "assistant")):
            if column in frame.columns:
                documents += [f"{IM_START}{role}\n{text}<|im_end|>\n" for text in frame[column] if text]
    random.Random(seed).shuffle(documents)
    return documents


def _pretrain(model, tokenizer: PreTrainedTokenizerFast, documents: list[str], steps: int, block_size: int,
              batch_size: int, learning_rate: float) -> list[float]:
    """Language modelling on ``documents`` packed into blocks; returns the loss of every step."""
    import torch

    ids: list[int] = []
    for body in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(body + [tokenizer.pad_token_id])  # <|endoftext|> separates documents
    blocks = torch.tensor(ids[: len(ids) // block_size * block_size]).view(-1, block_size)
    if len(blocks) == 0:
        raise ValueError(f"too little text to pre-train on: {len(ids)} tokens < block_size={block_size}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)  # 10% warmup
    losses = []
    model.train()
    for step in range(steps):
        batch = blocks[torch.randint(len(blocks), (batch_size,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def build_tiny_llm(
    out_dir: str | Path,
    csv_paths: str | Path | Sequence[str | Path],
    d_model: int = 64,
    layers: int = 2,
    heads: int | None = None,
    ffn: int | None = None,
    vocab_size: int = 2000,
    max_positions: int = 1024,
    seed: int = 0,
    max_new_tokens: int = 64,
    pretrain_steps: int = PRETRAIN_STEPS,
    block_size: int = 128,
    batch_size: int = 8,
    learning_rate: float = 3e-3,
) -> Path:
    """Build, briefly pre-train and save a tiny Llama-style chat model with its tokenizer (Hugging Face format).

    ``csv_paths`` trains the tokenizer and pre-trains the model; the sizes, ``seed`` (also of the pre-training
    batches), ``max_new_tokens`` and ``pretrain_steps`` are as in :func:`dsum.tiny.build.main`, with half of the
    ``heads`` as key/value heads (GQA) and ``ffn`` the SwiGLU size.

    Args:
        block_size: Tokens per pre-training sequence.
        batch_size: Sequences per pre-training step.
        learning_rate: Peak pre-training learning rate (cosine decay, 10% warmup).

    Returns ``out_dir`` as a :class:`~pathlib.Path`; ``pretraining.json`` in it records the losses.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    heads = heads if heads is not None else max(4, d_model // 64)
    ffn = ffn if ffn is not None else 2 * d_model
    for name, value in {"d_model": d_model, "layers": layers, "heads": heads, "ffn": ffn,
                        "max_positions": max_positions, "block_size": block_size, "batch_size": batch_size}.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be a positive integer.")
    if d_model % heads or heads % 2:
        raise ValueError(f"d_model={d_model}, heads={heads}: heads must be even and divide d_model.")
    if pretrain_steps < 0:
        raise ValueError(f"pretrain_steps={pretrain_steps} must be >= 0.")

    tokenizer = build_llm_tokenizer(csv_paths, vocab_size=vocab_size, max_positions=max_positions)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=max_positions,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=eos, pad_token_id=pad,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        losses = _pretrain(model, tokenizer, pretraining_documents(csv_paths, seed), pretrain_steps, block_size,
                           batch_size, learning_rate) if pretrain_steps else []
    model.eval()
    # Stop at the end of a turn or of a document, as Qwen2-Instruct's generation config does.
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad,
                                               max_new_tokens=max_new_tokens)
    model.config.dsum_tiny = True  # the registry keeps runs of tiny models in its sandbox
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"pretrain_steps": pretrain_steps, "block_size": block_size, "batch_size": batch_size,
              "learning_rate": learning_rate, "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None}
    (out / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out
