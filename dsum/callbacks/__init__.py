"""Callbacks that leave a run's results on disk, one job each:

- :class:`~dsum.callbacks.record.RunRecord`: the run record (``run.json``), status, metrics, sweep parameters;
- :class:`~dsum.callbacks.export.BestModelExport`: the best checkpoint in Hugging Face format;
- :class:`~dsum.callbacks.interrupt.InterruptHandler`: ``last.ckpt`` and a clean W&B finish on SIGTERM/Ctrl+C;
- :class:`~dsum.callbacks.last.LastCheckpoint`: ``last.ckpt`` at every epoch end and every N steps, whatever the metric;
- :class:`~dsum.callbacks.rng.RandomStateCheckpoint`: the random states in checkpoints, so a resume draws what an
  uninterrupted run would;
- :class:`~dsum.callbacks.submission.SubmissionWriter`: ``predict`` output as a submission CSV;
- :class:`~dsum.callbacks.early_stopping.OptionalEarlyStopping`: early stopping, off unless configured;
- :class:`~dsum.callbacks.divergence.NonFiniteLossGuard`: a non-finite loss fails the run (after a bounded number
  of skipped steps).
"""
