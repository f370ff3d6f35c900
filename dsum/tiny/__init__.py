"""Tiny random Hugging Face models and tokenizers for tests and the offline quickstart.

``build`` (BART, T5, GPT-2 and the command ``python -m dsum.tiny``), ``llm`` (the Llama-style chat LLM, briefly
pre-trained) and ``tokenizer_training`` (the tokenizers both train).
"""
