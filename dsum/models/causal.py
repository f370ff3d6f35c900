"""Decoder-only summarizer: GPT-2 / KoGPT2."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForCausalLM

from dsum.models.base import InputLayout, SummarizerBase
from dsum.models.heads import check_gathered, output_head_only_at


class CausalLMSummarizer(SummarizerBase):
    """Decoder-only summarizer (GPT-2, KoGPT2): the prompt is the dialogue plus a separator
    (``data.source_suffix``), and the model continues it with the summary (the only tokens with a loss).

    Args:
        pretrained: Hugging Face id or local directory of the model.
        packing: Train on packed rows: the batch's prompt + summary sequences laid end to end, in order, in rows as
            wide as the longest one, with position ids restarting at 0 for each (a block-diagonal causal mask: no
            attention between packed examples), so less of each row is padding. Evaluation is never packed.
        **kwargs: The settings of :class:`~dsum.models.base.SummarizerBase`.
    """

    decoder_only = True
    auto_class = AutoModelForCausalLM
    needs_separator = True  # data.source_suffix separates dialogue and summary (an instruct prompt needs none)

    def __init__(self, pretrained: str, packing: bool = False, **kwargs: Any) -> None:
        self.packing = packing
        super().__init__(pretrained, **kwargs)

    def check_layout(self, layout: InputLayout) -> None:
        super().check_layout(layout)
        if self.needs_separator and not layout.source_suffix:
            raise ValueError("CausalLMSummarizer needs a separator between dialogue and summary: set "
                             "data.source_suffix (configs/kogpt2.yaml uses '\\n요약: ')")

    def _prompts(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        return [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    def logits_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = self._prompts(batch)
        targets = [row[row != -100] for row in batch["labels"]]
        sequences = [torch.cat([p, t]) for p, t in zip(prompts, targets)]
        width = max(len(s) for s in sequences)
        # Each sequence's row and offset in it: one per row, or packed end to end (in order) when training.
        packed = self.packing and self.training
        slots = pack_in_order([len(s) for s in sequences], width) if packed else [(i, 0) for i in range(len(sequences))]
        rows = 1 + max(row for row, _ in slots)
        input_ids = batch["input_ids"].new_full((rows, width), self.tokenizer.pad_token_id)
        labels = batch["input_ids"].new_full((rows, width), -100)
        attention = torch.zeros_like(input_ids)
        positions = torch.arange(width, device=input_ids.device).repeat(rows, 1)
        for (row, start), prompt, target, seq in zip(slots, prompts, targets, sequences):
            end = start + len(seq)
            input_ids[row, start:end] = seq
            attention[row, start:end] = 1
            labels[row, start + len(prompt) : end] = target
            positions[row, start:end] = torch.arange(len(seq), device=input_ids.device)
            if end < width:  # the rest of the row is padding: a segment of its own
                positions[row, end:] = torch.arange(width - end, device=input_ids.device)
        # Position t predicts token t+1: the head runs only where the next token is a summary token (never across
        # a packed boundary, as every sequence ends with a summary token and starts with its prompt).
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        inputs = {"position_ids": positions, "attention_mask": None} if packed else {"attention_mask": attention}
        with output_head_only_at(self.model, keep) as gathered:
            logits = self.model(input_ids=input_ids, use_cache=False, **inputs).logits
        if gathered:
            return check_gathered(logits, keep, self.model), labels[:, 1:][keep[:, :-1]]
        return logits[:, :-1], labels[:, 1:]

    def generate_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        prompts = self._prompts(batch)
        input_ids = pad_sequence(prompts, batch_first=True, padding_value=self.tokenizer.pad_token_id,
                                 padding_side="left")
        attention = pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True, padding_side="left")
        out = self.model.generate(input_ids=input_ids, attention_mask=attention)
        return out[:, input_ids.shape[1] :]


def pack_in_order(lengths: list[int], width: int) -> list[tuple[int, int]]:
    """``(row, offset)`` of each sequence, laid end to end in order into rows of ``width`` tokens (next fit): the
    order of the examples, and so of their tokens in row-major order, is kept."""
    slots, row, used = [], 0, 0
    for length in lengths:
        if length > width:
            raise ValueError(f"a sequence of {length} tokens does not fit a packed row of {width}")
        if used + length > width:
            row, used = row + 1, 0
        slots.append((row, used))
        used += length
    return slots
