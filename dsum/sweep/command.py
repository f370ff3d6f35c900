"""The training command (``python main.py``, ``dsum fit``, W&B agents and in-process trials): it composes the two
layers. The sweep layer reads a trial's parameters (:mod:`dsum.sweep.mapping`) and adds its rules and callbacks; the
training core (``DsumCLI``) parses, types and runs. A run without sweep parameters is a plain ``DsumCLI`` run.
"""

from __future__ import annotations

import sys

# Exit status of a process ended by SIGTERM (128 + 15), so agents and schedulers see an interruption.
SIGTERM_EXIT = 143


def train() -> None:
    """``fit``/``validate``/``test``/``predict`` with the arguments in ``sys.argv[1:]`` (what ``main.py`` runs;
    W&B sweep agents and DDP workers re-run that command line)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dsum.cli import DsumCLI
    from dsum.infra.faults import report_faults
    from dsum.infra.secrets import redact_output, redact_text, secret_values
    from dsum.sweep.mapping import sweep_trial
    from dsum.sweep.pruning import pruning_callbacks

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
