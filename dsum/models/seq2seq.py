"""Encoder-decoder summarizer: BART / KoBART, T5 / pko-t5, mT5."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from dsum.models.base import SummarizerBase
from dsum.models.heads import check_gathered, output_head_only_at


class Seq2SeqSummarizer(SummarizerBase):
    """Encoder-decoder summarizer (BART, T5, mT5): the dialogue is encoded, the summary decoded.

    T5-family models expect a task prefix on the source (``data.source_prefix: "summarize: "``);
    a missing prefix is warned about at start.
    """

    def load_model(self, pretrained: str, trust_remote_code: bool) -> PreTrainedModel:
        return AutoModelForSeq2SeqLM.from_pretrained(pretrained, trust_remote_code=trust_remote_code)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and self.model.config.model_type in {"t5", "mt5"} and not datamodule.source_prefix:
            rank_zero_warn(
                f"{self.hparams.pretrained} is a T5-family model but data.source_prefix is empty; "
                "T5 checkpoints usually expect a prefix such as 'summarize: '"
            )

    def logits_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        keep = labels != -100
        # The LM head and the loss run only at summary tokens, not at the batch's label padding.
        with output_head_only_at(self.model, keep) as gathered:
            out = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=decoder_input_ids,
                use_cache=False,
            )
        if gathered:
            return check_gathered(out.logits, keep, self.model), labels[keep]
        return out.logits, labels

    def generate_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # Drop the decoder start token: it is not part of the summary.
        return out[:, 1:]
