"""dsum entry point: ``python main.py fit --config configs/kobart.yaml``.

W&B sweep agents call this file directly; sweep parameters on the command line (or in
``WANDB_SWEEP_PARAM_PATH``) are mapped onto CLI overrides before LightningCLI parses them.
"""

import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.cli import DsumCLI
from dsum.secrets import redact_text, secret_values
from dsum.sweep.params import rewrite_argv

# Exit status of a process ended by SIGTERM (128 + 15), so agents and schedulers see an interruption.
SIGTERM_EXIT = 143


def main() -> None:
    args = rewrite_argv(sys.argv[1:])
    secrets = secret_values()
    if any(secret in arg for arg in sys.argv for secret in secrets):
        # Loggers record sys.argv (W&B run metadata): keep credentials passed as overrides out of it.
        # (DDP workers re-run sys.argv, so pass secrets through the environment when using several devices.)
        sys.argv = [sys.argv[0], *(redact_text(arg, secrets) for arg in sys.argv[1:])]
    try:
        DsumCLI(args=args)
    except SIGTERMException:
        sys.exit(SIGTERM_EXIT)


if __name__ == "__main__":
    main()
