"""Infrastructure under every layer: atomic files, secrets, W&B tracking, checkpoint I/O, run checks and the
one-line fault report."""
