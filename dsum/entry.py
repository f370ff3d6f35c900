"""The ``dsum`` command: one entry point for training and every tool.

``dsum fit|validate|test|predict ...`` is ``python main.py ...``; ``dsum sweep|score|ensemble|tiny ...`` are the
``python -m dsum.<tool>`` commands (training is :func:`dsum.sweep.command.train`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from dsum.infra.log import every_rank
from dsum.sweep.command import train

TRAINING = ("fit", "validate", "test", "predict")


def _sweep(argv: list[str]) -> None:
    from dsum.sweep.__main__ import main

    sys.argv = ["dsum sweep", *argv]
    main()


def _score(argv: list[str]) -> None:
    from dsum.eval.score import main

    main(argv)


def _ensemble(argv: list[str]) -> None:
    from dsum.eval.ensemble import main

    main(argv)


def _tiny(argv: list[str]) -> None:
    from jsonargparse import CLI

    from dsum.tiny.build import main

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
        every_rank()  # a tool, not one rank of a training job: its messages show on every node
        TOOLS[command][0](rest)
    else:
        raise SystemExit(f"dsum: unknown command {command!r}\n{usage()}")


if __name__ == "__main__":
    main()
