"""``python -m dsum.tiny``: build the tiny offline models and tokenizers (see :func:`dsum.tiny.build.main`)."""

from jsonargparse import CLI

from dsum.tiny.build import main

if __name__ == "__main__":
    CLI(main, as_positional=False, prog="python -m dsum.tiny")
