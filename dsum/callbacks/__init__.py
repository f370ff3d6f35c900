"""Callbacks that leave a run's results on disk, one job per module: the run record, the best-model export,
interrupts, ``last.ckpt``, random states, the submission CSV, optional early stopping, divergence."""
