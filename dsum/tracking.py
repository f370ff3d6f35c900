"""W&B set-up: credentials check with an offline fallback, and the default logger."""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

DEFAULT_PROJECT = "dsum"


def wandb_base_url(environ: dict[str, str] | None = None) -> str:
    """The W&B server: ``WANDB_BASE_URL``, else the one ``wandb login --host`` saved, else W&B's cloud."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_BASE_URL"):
        return env["WANDB_BASE_URL"]
    settings = Path(env.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb") / "settings"
    parser = configparser.ConfigParser()
    try:
        parser.read(settings, encoding="utf-8")
    except (configparser.Error, OSError):
        pass
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


def ensure_wandb_mode(environ: dict[str, str] | None = None) -> str:
    """Pick the W&B mode before any logger starts, so a run never prompts or crashes for a login.

    An explicit ``WANDB_MODE`` is kept. Without one and without credentials, the run goes offline and
    says so in one line. The mode is written to the environment, so DDP workers and trial processes
    inherit it.
    """
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE")
    if mode:
        return mode
    if has_wandb_credentials(env):
        return "online"
    env["WANDB_MODE"] = "offline"
    rank_zero_info(
        "dsum: no W&B credentials (WANDB_API_KEY or `wandb login`); logging offline. "
        "Upload later with `wandb sync <run dir>/wandb/offline-run-*`."
    )
    return "offline"


def default_wandb_logger(run_dir: str | Path, run_id: str | None, resume: bool) -> WandbLogger:
    """The default logger: W&B, files under the run directory, no model uploads.

    Project and entity come from ``WANDB_PROJECT`` / ``WANDB_ENTITY`` (project default ``dsum``);
    set ``trainer.logger`` in a config to choose them there instead.
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        entity=os.environ.get("WANDB_ENTITY"),
        save_dir=str(run_dir),
        id=run_id,
        resume="allow" if resume else None,
        log_model=False,
    )
