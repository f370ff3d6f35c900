"""Hyperparameter sweeps over ``main.py``.

A sweep only ever drives ``main.py`` through its command line, the way a ``wandb agent`` does:

- :mod:`dsum.sweep.params` maps sweep parameter names (the original project's names, presets and
  derived values) onto LightningCLI overrides before LightningCLI parses them;
- :mod:`dsum.sweep.spec` loads and checks sweep YAMLs (``sweeps/*.yaml``) and samples from them.

This package imports nothing heavy: ``main.py`` runs it before torch is needed.
"""
