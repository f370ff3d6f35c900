"""dsum entry point: ``python main.py fit --config configs/kobart.yaml``.

W&B sweep agents call this file directly. It composes the two layers: the sweep layer reads the trial's
parameters (``dsum.sweep.mapping``) and adds its rules and callbacks; the training core (``DsumCLI``) parses,
types and runs.
"""

import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from dsum.cli import DsumCLI
from dsum.faults import report_faults
from dsum.secrets import redact_output, redact_text, secret_values
from dsum.sweep.mapping import sweep_trial
from dsum.sweep.pruning import pruning_callbacks

# Exit status of a process ended by SIGTERM (128 + 15), so agents and schedulers see an interruption.
SIGTERM_EXIT = 143


def main() -> None:
    redact_output()  # nothing this process prints shows a secret, not even a failed parse's "Given value:"
    with report_faults():  # known faults (divergence, full disk, a bad setting) end in one clear line
        trial = sweep_trial(sys.argv[1:])
        secrets = secret_values()
        if any(secret in arg for arg in sys.argv for secret in secrets):
            # Loggers record sys.argv (W&B run metadata): keep credentials passed as overrides out of it.
            # (DDP workers re-run sys.argv, so pass secrets through the environment when using several devices.)
            sys.argv = [sys.argv[0], *(redact_text(arg, secrets) for arg in sys.argv[1:])]
        try:
            DsumCLI(args=trial.cli_args, extra_callbacks=[*trial.callbacks(), *pruning_callbacks()],
                    config_hooks=[trial.apply_rules])
        except SIGTERMException:
            sys.exit(SIGTERM_EXIT)


if __name__ == "__main__":
    main()
