"""W&B sweeps: create a sweep from a YAML, and run `wandb agent` processes on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dsum.constants import SWEEP_DIR_ENV
from dsum.infra.secrets import refuse_secret_values
from dsum.infra.tracking import has_wandb_credentials
from dsum.sweep.spec import load_sweep, validate_sweep
from dsum.sweep.summary import sweep_dir_for


def sweep_name(config: dict[str, Any], path: str | Path) -> str:
    """The sweep's name: its YAML's ``name:``, else the file's stem."""
    return str(config.get("name") or Path(path).stem)


def require_server() -> None:
    """A W&B sweep needs the server; fail early with what to do instead."""
    if os.environ.get("WANDB_MODE") in {"offline", "disabled"} or not has_wandb_credentials():
        raise SystemExit(
            "W&B sweeps need the W&B server and credentials (WANDB_API_KEY or `wandb login`, and WANDB_MODE "
            "not offline/disabled). Without a server, run the same YAML offline: "
            "python -m dsum.sweep local sweeps/<name>.yaml --count N"
        )


def create_sweep(sweep_file: str | Path, project: str | None = None, entity: str | None = None) -> str:
    """Validate the sweep YAML and register it with W&B; returns the sweep id."""
    config = load_sweep(sweep_file)
    validate_sweep(config, sweep_file)
    refuse_secret_values(config, str(sweep_file))  # W&B stores the sweep config as given
    require_server()
    import wandb

    return wandb.sweep(config, project=project or config.get("project") or os.environ.get("WANDB_PROJECT", "dsum"),
                       entity=entity or config.get("entity") or os.environ.get("WANDB_ENTITY"))


def sweep_path(sweep_id: str, project: str | None, entity: str | None) -> str:
    """``entity/project/sweep_id`` when known, so agents on any machine find the sweep."""
    if "/" in sweep_id:
        return sweep_id
    project = project or os.environ.get("WANDB_PROJECT", "dsum")
    entity = entity or os.environ.get("WANDB_ENTITY")
    return "/".join(p for p in (entity, project, sweep_id) if p)


def agent_command(sweep_id: str, count: int | None, project: str | None, entity: str | None) -> list[str]:
    count_args = ["--count", str(count)] if count else []
    return [sys.executable, "-m", "wandb", "agent", *count_args, sweep_path(sweep_id, project, entity)]


def agent_env(name: str) -> dict[str, str]:
    """Environment for agent processes: trials write their run dirs under ``outputs/sweep_<name>/runs``,
    and the agent's ``${interpreter}`` (the bare word ``python``, looked up on PATH) is this interpreter."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {SWEEP_DIR_ENV: os.environ.get(SWEEP_DIR_ENV) or str(sweep_dir_for(name)), "PATH": path}


def run_agent(sweep_id: str, name: str, count: int | None = None, project: str | None = None,
              entity: str | None = None) -> int:
    """Run one ``wandb agent`` in the foreground; each trial is one ``main.py`` process tree."""
    require_server()
    return subprocess.call(agent_command(sweep_id, count, project, entity), env={**os.environ, **agent_env(name)})
