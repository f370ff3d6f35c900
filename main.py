"""dsum entry point: ``python main.py fit --config configs/kobart.yaml``.

W&B sweep agents call this file directly; sweep parameters on the command line (or in
``WANDB_SWEEP_PARAM_PATH``) are mapped onto CLI overrides before LightningCLI parses them.
"""

import sys

from dsum.cli import DsumCLI
from dsum.sweep.params import rewrite_argv


def main() -> None:
    DsumCLI(args=rewrite_argv(sys.argv[1:]))


if __name__ == "__main__":
    main()
