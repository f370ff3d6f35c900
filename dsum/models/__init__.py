"""Summarizer LightningModules, one per model family."""

from dsum.models.base import GenerationSettings, SummarizerBase
from dsum.models.causal import CausalLMSummarizer
from dsum.models.instruct import InstructSummarizer, LoraSettings
from dsum.models.seq2seq import Seq2SeqSummarizer

__all__ = [
    "CausalLMSummarizer", "GenerationSettings", "InstructSummarizer", "LoraSettings", "Seq2SeqSummarizer",
    "SummarizerBase",
]
