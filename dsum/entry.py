"""The ``dsum`` command: one entry point for training and every tool.

``dsum fit|validate|test|predict ...`` is ``python main.py ...``; ``dsum sweep|score|ensemble|tiny ...`` are the
``python -m dsum.<tool>`` commands. It composes the two layers: the sweep layer reads a trial's parameters
(``dsum.sweep.mapping``) and adds its rules and callbacks; the training core (``DsumCLI``) parses, types and runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

# Exit status of a process ended by SIGTERM (128 + 15), so agents and schedulers see an interruption.
SIGTERM_EXIT = 143
TRAINING = ("fit", "validate", "test", "predict")


def train() -> None:
    """``fit``/``validate``/``test``/``predict`` with the arguments in ``sys.argv[1:]`` (what ``main.py`` runs;
    W&B sweep agents and DDP workers re-run that command line)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dsum.cli import DsumCLI
    from dsum.faults import report_faults
    from dsum.secrets import redact_output, redact_text, secret_values
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


def _sweep(argv: list[str]) -> None:
    from dsum.sweep.__main__ import main

    sys.argv = ["dsum sweep", *argv]
    main()


def _score(argv: list[str]) -> None:
    from dsum.score import main

    main(argv)


def _ensemble(argv: list[str]) -> None:
    from dsum.ensemble import main

    main(argv)


def _tiny(argv: list[str]) -> None:
    from jsonargparse import CLI

    from dsum.tiny import main

    CLI(main, args=argv, as_positional=False, prog="dsum tiny")


TOOLS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "sweep": (_sweep, "W&B and local (Optuna) sweeps, summaries, reports, the model registry"),
    "score": (_score, "score a submission CSV against references (official-style Korean ROUGE)"),
    "ensemble": (_ensemble, "MBR ensemble of submissions or exported models"),
    "tiny": (_tiny, "build tiny random models and tokenizers for tests and the quickstart"),
}


def usage() -> str:
    """The list of commands."""
    lines = ["usage: dsum COMMAND [ARGS ...]   (dsum COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {what} (python main.py {name})" for name, what in
              zip(TRAINING, ("train, validate and export", "validate a model or checkpoint",
                             "test a model or checkpoint", "write a submission CSV"))]
    lines += [f"  {name:<9} {what}" for name, (_, what) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``dsum COMMAND ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command in TRAINING:
        sys.argv = [sys.argv[0], command, *rest]
        train()
    elif command in TOOLS:
        TOOLS[command][0](rest)
    else:
        raise SystemExit(f"dsum: unknown command {command!r}\n{usage()}")


if __name__ == "__main__":
    main()
