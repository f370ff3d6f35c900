"""W&B set-up: credentials check with an offline fallback, and the default logger."""

from __future__ import annotations

import configparser
import contextlib
import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info

from dsum.infra.files import check_writable

DEFAULT_PROJECT = "dsum"
INIT_TIMEOUT_ENV = "DSUM_WANDB_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 30.0


class WandbUnreachable(RuntimeError):
    """The W&B server does not answer and ``WANDB_MODE=online`` forbids the offline fallback."""


def wandb_base_url(environ: dict[str, str] | None = None) -> str:
    """The W&B server: ``WANDB_BASE_URL``, else the one ``wandb login --host`` saved, else W&B's cloud."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_BASE_URL"):
        return env["WANDB_BASE_URL"]
    settings = Path(env.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb") / "settings"
    parser = configparser.ConfigParser()
    with contextlib.suppress(configparser.Error, OSError):
        parser.read(settings, encoding="utf-8")
    return parser.get("default", "base_url", fallback="https://api.wandb.ai")


def has_wandb_credentials(environ: dict[str, str] | None = None) -> bool:
    """Whether W&B can log in without prompting: an API key in the environment, or a ``~/.netrc`` entry for
    the server (named ``host:port`` when the URL has a port, as ``wandb login`` writes it)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    url = urlparse(wandb_base_url(env))
    path = Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        entries = netrc.netrc(path) if path.is_file() else None
    except (netrc.NetrcParseError, OSError):
        return False
    return entries is not None and any(
        entries.authenticators(machine) is not None for machine in {url.netloc, url.hostname} if machine
    )


def init_timeout(environ: dict[str, str] | None = None) -> float:
    """Seconds to wait for the W&B server before going offline: ``DSUM_WANDB_INIT_TIMEOUT`` (default 30)."""
    env = os.environ if environ is None else environ
    raw = env.get(INIT_TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_INIT_TIMEOUT
    except ValueError:
        raise ValueError(f"{INIT_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{INIT_TIMEOUT_ENV}={raw!r} must be positive")
    return value


def server_unreachable(url: str, timeout: float) -> str | None:
    """Why the W&B server at ``url`` cannot be reached within ``timeout`` seconds, or None when it answers
    (any HTTP status counts as an answer: credentials are W&B's own business)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout):  # noqa: S310 (http/https only)
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        return str(error.reason)
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__


def ensure_wandb_mode(environ: dict[str, str] | None = None,
                      probe: Callable[[str, float], str | None] = server_unreachable) -> str:
    """Pick the W&B mode before any logger starts, so a run never prompts, hangs or crashes for W&B.

    An explicit ``WANDB_MODE`` other than ``online`` is kept. Otherwise the run goes offline, saying so in one line,
    without credentials or when the server does not answer within ``DSUM_WANDB_INIT_TIMEOUT`` seconds (also W&B's
    own init timeout); ``WANDB_MODE=online`` raises :class:`WandbUnreachable` instead. The mode is written to
    ``environ`` (default ``os.environ``), so DDP workers and trial processes inherit it. ``probe(url, timeout)`` says
    why the server is unreachable, or None (tests replace it).
    """
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE")
    if mode and mode != "online":
        return mode
    if not mode and not has_wandb_credentials(env):
        return _go_offline(env, "no W&B credentials (WANDB_API_KEY or `wandb login`)")
    timeout = init_timeout(env)
    env.setdefault("WANDB_INIT_TIMEOUT", str(timeout))
    url = wandb_base_url(env)
    reason = probe(url, timeout)
    if reason is None:
        return "online"
    if mode == "online":
        raise WandbUnreachable(
            f"W&B server {url} unreachable ({reason}) and WANDB_MODE=online asks for online logging only; "
            f"fix the connection, or unset WANDB_MODE to log offline and `wandb sync` later"
        )
    return _go_offline(env, f"W&B server {url} unreachable ({reason}) within {timeout:g}s")


def _go_offline(env: dict[str, str], why: str) -> str:
    env["WANDB_MODE"] = "offline"
    rank_zero_info(f"dsum: {why}; logging offline. Upload later with `wandb sync <run dir>/wandb/offline-run-*`.")
    return "offline"


class OfflineFallbackWandbLogger(WandbLogger):
    """``WandbLogger`` whose run goes offline, saying so, when ``wandb.init`` cannot reach the server (the server
    answered the first probe, then did not let the run start within ``WANDB_INIT_TIMEOUT``). Training goes on;
    ``wandb sync`` uploads the run later. An explicit ``WANDB_MODE=online`` keeps W&B's error instead."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        import wandb

        try:
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        except wandb.errors.CommError as error:
            if os.environ.get("WANDB_MODE") == "online" or self._wandb_init.get("mode") == "offline":
                raise
            reason = " ".join(str(error).split())[:200]
            os.environ["WANDB_MODE"] = "offline"
            self._wandb_init["mode"] = "offline"
            wandb.teardown()  # the service still holds the run id it failed to start online
            rank_zero_info(
                f"dsum: W&B run could not start online ({reason}); logging offline. "
                f"Upload later with `wandb sync {self.save_dir}/wandb/offline-run-*`."
            )
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]


def default_wandb_logger(run_dir: str | Path, run_id: str | None, resume: bool) -> WandbLogger:
    """The default logger: W&B, files under the run directory, no model uploads; offline (saying so) when the
    server cannot start the run (:class:`OfflineFallbackWandbLogger`). Project and entity come from
    ``WANDB_PROJECT`` / ``WANDB_ENTITY`` (project default ``dsum``), or set ``trainer.logger`` in a config.
    """
    # A full or read-only run directory fails here, in one line, not in W&B's own writers (which would log
    # pages of errors, or quietly write to a temporary directory outside the run).
    check_writable(run_dir)
    return OfflineFallbackWandbLogger(
        project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        entity=os.environ.get("WANDB_ENTITY"),
        save_dir=str(run_dir),
        id=run_id,
        resume="allow" if resume else None,
        log_model=False,
    )
