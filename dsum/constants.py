"""Names shared across dsum's layers, defined once."""

MONITOR = "val/rouge_mean"
"""The metric a run is judged by: checkpoint and early-stopping monitor, sweep metric, registry score."""

SWEEP_DIR_ENV = "DSUM_SWEEP_DIR"
"""Environment variable naming a sweep's output directory (trials' run directories go under ``<it>/runs``)."""

LAST_NAME = "last.ckpt"
"""The latest training state in a run's ``checkpoints/`` (``fit --ckpt_path last`` resumes from it)."""
