"""dsum entry point: ``python main.py fit --config configs/kobart.yaml``.

W&B sweep agents call this file directly; sweep parameters on the command line (or in
``WANDB_SWEEP_PARAM_PATH``) are mapped onto CLI overrides before LightningCLI parses them.
"""

import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.cli import DsumCLI
from dsum.sweep.params import rewrite_argv

# Exit status of a process ended by SIGTERM (128 + 15), so agents and schedulers see an interruption.
SIGTERM_EXIT = 143


def main() -> None:
    try:
        DsumCLI(args=rewrite_argv(sys.argv[1:]))
    except SIGTERMException:
        sys.exit(SIGTERM_EXIT)


if __name__ == "__main__":
    main()
