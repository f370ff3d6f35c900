"""Hyperparameter sweeps over ``main.py``.

A sweep only ever drives ``main.py`` through its command line, the way a ``wandb agent`` does:

- :mod:`dsum.sweep.mapping` maps sweep parameter names (the original project's names, presets and
  derived values) onto LightningCLI arguments, and adds the rules that need the typed config;
- :mod:`dsum.sweep.spec` loads and checks sweep YAMLs (``sweeps/*.yaml``) and samples from them.

The sweep layer uses the training core (``dsum.cli``, ``dsum.callbacks``); the core never imports it.
"""
