"""Tiny random Hugging Face models and tokenizers for tests and the offline quickstart.

``build`` (BART, T5, GPT-2 and the command ``python -m dsum.tiny``), ``llm`` (the Llama-style chat LLM, briefly
pre-trained) and ``tokenizer_training`` (the tokenizers both train). ``dsum.tiny.build_tiny_model`` and the other
names of :mod:`dsum.tiny.build` (the module ``dsum.tiny`` was before it became a package) still resolve here.
"""

import importlib
from typing import Any

SUBMODULES = ("build", "llm", "tokenizer_training")


def __getattr__(name: str) -> Any:
    """The names of :mod:`dsum.tiny.build`, imported on first use (it imports transformers)."""
    if name.startswith("__") or name in SUBMODULES:  # a submodule not imported yet: the import system loads it
        raise AttributeError(f"module 'dsum.tiny' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module("dsum.tiny.build"), name)
    except AttributeError:
        raise AttributeError(f"module 'dsum.tiny' has no attribute {name!r}") from None
