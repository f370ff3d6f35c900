"""Tiny random Hugging Face models and tokenizers for tests and the offline quickstart.

``build`` (BART, T5, GPT-2 and ``python -m dsum.tiny``), ``llm`` (the Llama-style chat LLM) and
``tokenizer_training``. The names of :mod:`dsum.tiny.build` (the old module ``dsum.tiny``) still resolve here.
"""

import importlib
from typing import Any

SUBMODULES = ("build", "llm", "tokenizer_training")


def __getattr__(name: str) -> Any:
    """The names of :mod:`dsum.tiny.build`, imported on first use (it imports transformers)."""
    if not name.startswith("__") and name not in SUBMODULES:  # a submodule not imported yet: the import system loads it
        build = importlib.import_module("dsum.tiny.build")
        if hasattr(build, name):
            return getattr(build, name)
    raise AttributeError(f"module 'dsum.tiny' has no attribute {name!r}")
