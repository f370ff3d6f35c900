"""Decoder-only summarizer: GPT-2 / KoGPT2."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from dsum.models.base import InputLayout, SummarizerBase
from dsum.models.heads import check_gathered, output_head_only_at


class CausalLMSummarizer(SummarizerBase):
    """Decoder-only summarizer (GPT-2, KoGPT2): the prompt is the dialogue plus a separator
    (``data.source_suffix``), and the model continues it with the summary.

    The loss covers summary tokens only. For generation, prompts are left-padded and only the
    continuation is returned.
    """

    decoder_only = True

    def load_model(self, pretrained: str, trust_remote_code: bool) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(
            pretrained, trust_remote_code=trust_remote_code, **self.loading_kwargs()
        )

    def check_layout(self, layout: InputLayout) -> None:
        super().check_layout(layout)
        if not layout.source_suffix:
            raise ValueError(
                "CausalLMSummarizer needs a separator between dialogue and summary: set data.source_suffix "
                "(configs/kogpt2.yaml uses '\\n요약: ')"
            )

    def _prompts(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        return [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    def logits_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        prompts = self._prompts(batch)
        targets = [row[row != -100] for row in batch["labels"]]
        sequences = [torch.cat([p, t]) for p, t in zip(prompts, targets)]
        width = max(len(s) for s in sequences)
        input_ids = batch["input_ids"].new_full((len(sequences), width), pad)
        labels = batch["input_ids"].new_full((len(sequences), width), -100)
        attention = torch.zeros_like(input_ids)
        for i, (prompt, target, seq) in enumerate(zip(prompts, targets, sequences)):
            input_ids[i, : len(seq)] = seq
            attention[i, : len(seq)] = 1
            labels[i, len(prompt) : len(seq)] = target
        # Position t predicts token t+1, so the head runs only where the next token is a summary token:
        # not over the prompt (most of the sequence) and not over padding.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        with output_head_only_at(self.model, keep) as gathered:
            logits = self.model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        if gathered:
            return check_gathered(logits, keep, self.model), labels[:, 1:][keep[:, :-1]]
        return logits[:, :-1], labels[:, 1:]

    def generate_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id
        prompts = self._prompts(batch)
        width = max(len(p) for p in prompts)
        input_ids = batch["input_ids"].new_full((len(prompts), width), pad)
        attention = torch.zeros_like(input_ids)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = prompt
            attention[i, width - len(prompt) :] = 1
        out = self.model.generate(input_ids=input_ids, attention_mask=attention)
        return out[:, width:]
