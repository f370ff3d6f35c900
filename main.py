"""dsum entry point: ``python main.py fit --config configs/kobart.yaml`` (the same as ``dsum fit ...``).

W&B sweep agents call this file directly. :func:`dsum.sweep.command.train` composes the two layers: the sweep layer
reads the trial's parameters and adds its rules and callbacks; the training core (``DsumCLI``) parses, types
and runs.
"""

from dsum.sweep.command import train

if __name__ == "__main__":
    train()
