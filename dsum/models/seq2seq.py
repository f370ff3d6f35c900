"""Encoder-decoder summarizer: BART / KoBART, T5 / pko-t5, mT5."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from transformers import AutoModelForSeq2SeqLM
from transformers.modeling_outputs import BaseModelOutput

from dsum.models.base import InputLayout, SummarizerBase
from dsum.models.generation import generation_cache
from dsum.models.heads import check_gathered, output_head_only_at


class Seq2SeqSummarizer(SummarizerBase):
    """Encoder-decoder summarizer (BART, T5, mT5): the dialogue is encoded, the summary decoded. A T5-family model
    without ``data.source_prefix`` (e.g. ``"summarize: "``) is warned about. In evaluation, generation reuses the
    encoder output of the loss pass, and beam search keeps one cross-attention cache (:mod:`dsum.models.generation`).
    """

    auto_class = AutoModelForSeq2SeqLM
    # Evaluation: the encoder output of the last loss pass without gradients, with the input ids it encoded.
    _encoded: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_layout(self, layout: InputLayout) -> None:
        super().check_layout(layout)
        if self.model.config.model_type in {"t5", "mt5"} and not layout.source_prefix:
            rank_zero_warn(f"{self.hparams.pretrained} is a T5-family model but data.source_prefix is empty; "
                           "T5 checkpoints usually expect a prefix such as 'summarize: '")

    def logits_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        keep = labels != -100
        # The LM head and the loss run only at summary tokens, not at the batch's label padding.
        with output_head_only_at(self.model, keep) as gathered:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=decoder_input_ids, use_cache=False)
        # Kept for generate_ids on the same batch (validation and test run the loss pass first).
        self._encoded = None if torch.is_grad_enabled() else (batch["input_ids"], out.encoder_last_hidden_state)
        if gathered:
            return check_gathered(out.logits, keep, self.model), labels[keep]
        return out.logits, labels

    def generate_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        kwargs = generation_cache(self.model, self.generation.num_beams)
        encoded, self._encoded = self._encoded, None
        if encoded is not None and encoded[0] is batch["input_ids"] and encoded[1] is not None:
            kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=encoded[1])
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
        # Drop the decoder start token: it is not part of the summary.
        return out[:, 1:]
