"""W&B credentials: found where `wandb login` puts them, or the run goes offline and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsum.tracking import ensure_wandb_mode, has_wandb_credentials, wandb_base_url


@pytest.fixture()
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose netrc and W&B settings live in tmp_path (both absent at first)."""
    return {"NETRC": str(tmp_path / ".netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb")}


def netrc_entry(env: dict[str, str], machine: str) -> None:
    Path(env["NETRC"]).write_text(f"machine {machine}\n  login user\n  password abc123\n")


def test_no_credentials_goes_offline_and_says_so(home, caplog) -> None:
    caplog.set_level("INFO")
    assert ensure_wandb_mode(home) == "offline" and home["WANDB_MODE"] == "offline"
    assert "no W&B credentials" in caplog.text and "wandb sync" in caplog.text


def test_explicit_mode_and_api_key(home) -> None:
    assert ensure_wandb_mode({**home, "WANDB_MODE": "disabled"}) == "disabled"
    assert ensure_wandb_mode({**home, "WANDB_API_KEY": "x" * 40}) == "online"


def test_cloud_login_in_netrc(home) -> None:
    netrc_entry(home, "api.wandb.ai")
    assert has_wandb_credentials(home)


def test_self_hosted_server_with_a_port(home) -> None:
    # `wandb login --host http://localhost:8080` names the netrc entry host:port.
    netrc_entry(home, "localhost:8080")
    assert not has_wandb_credentials(home)  # the cloud is not where this login points
    assert has_wandb_credentials({**home, "WANDB_BASE_URL": "http://localhost:8080"})


def test_server_saved_by_wandb_login_host(home) -> None:
    # `wandb login --host` also saves the server in W&B's settings file, not in the environment.
    settings = Path(home["WANDB_CONFIG_DIR"]) / "settings"
    settings.parent.mkdir()
    settings.write_text("[default]\nbase_url = https://wandb.example.org\n")
    netrc_entry(home, "wandb.example.org")
    assert wandb_base_url(home) == "https://wandb.example.org"
    assert has_wandb_credentials(home) and ensure_wandb_mode(home) == "online"


def test_sigterm_requeues_a_sweep_trial_only_when_asked() -> None:
    from dsum.callbacks import requeue_on_sigterm

    assert requeue_on_sigterm({})  # a single run: marked preempting (resumable), not crashed
    # In a sweep, SIGTERM is how the agent stops a trial (hyperband, UI): a requeue would run it again.
    assert not requeue_on_sigterm({"WANDB_SWEEP_ID": "abc123"})
    assert requeue_on_sigterm({"WANDB_SWEEP_ID": "abc123", "DSUM_REQUEUE_ON_SIGTERM": "1"})  # spot/SLURM
    assert not requeue_on_sigterm({"DSUM_REQUEUE_ON_SIGTERM": "0"})
