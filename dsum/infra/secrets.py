"""Keep credentials out of everything a run writes: configs, run records, summaries, logs."""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"  # a plain YAML scalar (a leading `*` would read as an alias)
# Keys whose values are secrets wherever they appear.
# (`token` only as a whole trailing word: `hf_token` is a secret, `max_tokens` is not.)
SECRET_KEY_PATTERN = re.compile(r"(api[_-]?key|secret|password|passwd|credential|(^|[_.-])token$)", re.IGNORECASE)
# Environment variables whose values must never be written out, even when passed as overrides.
SECRET_ENV_PATTERN = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
MIN_SECRET_LENGTH = 6
# `--x.api_key=...`, `password: ...`: the value after a secret-looking name.
_SECRET_ASSIGNMENT = re.compile(r"((?:api[_-]?key|secret|password)\s*[=:]\s*)(\S+)", re.IGNORECASE)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so substrings go last)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_ENV_PATTERN.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every known secret value replaced, and `--x.api_key=...` style values masked."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)


def redact(data: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a JSON-like structure with secret keys and secret values masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(data, dict):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_KEY_PATTERN.search(k) and v not in (None, "")
            else redact(v, secrets)
            for k, v in data.items()
        }
    if isinstance(data, (list, tuple)):
        return type(data)(redact(v, secrets) for v in data)
    if isinstance(data, str):
        return redact_text(data, secrets)
    return data


class SecretValueError(ValueError):
    """A secret (the value of a secret environment variable) was given where dsum or a library would store it."""


def secret_env_names(value: str, environ: dict[str, str] | None = None) -> list[str]:
    """The secret-looking environment variables whose value occurs in ``value``."""
    env = os.environ if environ is None else environ
    return sorted(k for k, v in env.items()
                  if SECRET_ENV_PATTERN.search(k) and len(v) >= MIN_SECRET_LENGTH and v in value)


def find_secret_values(
    data: Any, environ: dict[str, str] | None = None, where: str = ""
) -> list[tuple[str, list[str]]]:
    """Where a JSON-like structure holds a known secret value: ``(dotted key path, [environment variable names])``
    for every string (key or value) that contains one."""
    found: list[tuple[str, list[str]]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and (names := secret_env_names(key, environ)):
                found.append((path, names))
            found += find_secret_values(value, environ, path)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            found += find_secret_values(value, environ, f"{where}[{i}]")
    elif isinstance(data, str) and (names := secret_env_names(data, environ)):
        found.append((where, names))
    return found


def refuse_secret_values(data: Any, source: str, environ: dict[str, str] | None = None) -> None:
    """Refuse a sweep config (or any settings that W&B, Optuna or a log would store as given) holding the value of a
    secret environment variable (those libraries write values raw): a ``SecretValueError`` names ``source``, each
    key path and the environment variable(s) it matches, never the value."""
    found = find_secret_values(data, environ)
    if found:
        places = "; ".join(f"{path} holds the value of ${' / $'.join(names)}" for path, names in found)
        raise SecretValueError(
            f"{source}: {places}. Secrets are never sweep values or command-line overrides (they would be written "
            "to the study journal, W&B's sweep config and logs in clear): pass them through the environment "
            "(e.g. HF_TOKEN, WANDB_API_KEY), which dsum reads and never writes")


class _RedactingStream:
    """A text stream proxy whose writes have secret values masked (see :func:`redact_output`)."""

    def __init__(self, stream: Any, secrets: list[str]) -> None:
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text, self._secrets))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_output(environ: dict[str, str] | None = None) -> None:
    """Mask secret values in everything this process prints from Python (``sys.stdout``/``sys.stderr``): an
    override that fails to parse is echoed by jsonargparse (``Given value: ...``), and a failed trial's log
    is kept. The entry point calls this first. Output written by other processes or C code is not covered."""
    import sys

    secrets = secret_values(environ)
    if not secrets:
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _RedactingStream):
            setattr(sys, name, _RedactingStream(stream, secrets))
