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


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so substrings go last)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_ENV_PATTERN.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every known secret value replaced, and `--x.api_key=...` style values masked."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    return re.sub(
        r"((?:api[_-]?key|secret|password)\s*[=:]\s*)(\S+)",
        lambda m: m.group(1) + REDACTED,
        text,
        flags=re.IGNORECASE,
    )


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
