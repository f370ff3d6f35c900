"""Hyperparameter sweeps over ``main.py``, driven only through its command line, as a ``wandb agent`` does.

The sweep layer uses the training core (``dsum.cli``, ``dsum.callbacks``); the core never imports it.
"""
