"""W&B credentials: found where `wandb login` puts them, or the run goes offline and says so."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from dsum.infra.faults import fatal_message
from dsum.infra.tracking import WandbUnreachable, ensure_wandb_mode, has_wandb_credentials, wandb_base_url


@pytest.fixture()
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose netrc and W&B settings live in tmp_path (both absent at first)."""
    return {"NETRC": str(tmp_path / ".netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb")}


def answers(url: str, timeout: float) -> None:
    """A probe for a W&B server that answers."""
    return None


def netrc_entry(env: dict[str, str], machine: str) -> None:
    Path(env["NETRC"]).write_text(f"machine {machine}\n  login user\n  password abc123\n")


def test_no_credentials_goes_offline_and_says_so(home, caplog) -> None:
    caplog.set_level("INFO")
    assert ensure_wandb_mode(home) == "offline" and home["WANDB_MODE"] == "offline"
    assert "no W&B credentials" in caplog.text and "wandb sync" in caplog.text


def test_explicit_mode_and_api_key(home) -> None:
    assert ensure_wandb_mode({**home, "WANDB_MODE": "disabled"}) == "disabled"
    assert ensure_wandb_mode({**home, "WANDB_API_KEY": "x" * 40}, probe=answers) == "online"


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
    assert has_wandb_credentials(home) and ensure_wandb_mode(home, probe=answers) == "online"


def test_sigterm_requeues_a_sweep_trial_only_when_asked() -> None:
    from dsum.callbacks.interrupt import requeue_on_sigterm

    assert requeue_on_sigterm({})  # a single run: marked preempting (resumable), not crashed
    # In a sweep, SIGTERM is how the agent stops a trial (hyperband, UI): a requeue would run it again.
    assert not requeue_on_sigterm({"WANDB_SWEEP_ID": "abc123"})
    assert requeue_on_sigterm({"WANDB_SWEEP_ID": "abc123", "DSUM_REQUEUE_ON_SIGTERM": "1"})  # spot/SLURM
    assert not requeue_on_sigterm({"DSUM_REQUEUE_ON_SIGTERM": "0"})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def test_unreachable_server_with_credentials_goes_offline_in_time(home, caplog) -> None:
    caplog.set_level("INFO")
    env = {**home, "WANDB_API_KEY": "f" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
           "DSUM_WANDB_INIT_TIMEOUT": "5"}
    started = time.monotonic()
    assert ensure_wandb_mode(env) == "offline" and env["WANDB_MODE"] == "offline"
    assert time.monotonic() - started < 5
    assert env["WANDB_INIT_TIMEOUT"] == "5.0"
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 1 and env["WANDB_BASE_URL"] in lines[0] and "wandb sync" in lines[0]


def test_unreachable_server_with_online_mode_fails_fast(home) -> None:
    env = {**home, "WANDB_API_KEY": "f" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
           "WANDB_MODE": "online"}
    started = time.monotonic()
    with pytest.raises(WandbUnreachable, match="unreachable .*WANDB_MODE=online") as error:
        ensure_wandb_mode(env)
    assert time.monotonic() - started < 5 and env["WANDB_BASE_URL"] in str(error.value)
    assert fatal_message(error.value).startswith("dsum: W&B server ")


def test_init_timeout_must_be_positive_seconds(home) -> None:
    for bad in ("0", "soon"):
        with pytest.raises(ValueError, match="DSUM_WANDB_INIT_TIMEOUT"):
            ensure_wandb_mode({**home, "WANDB_API_KEY": "f" * 40, "DSUM_WANDB_INIT_TIMEOUT": bad}, probe=answers)


# A W&B server that answers every request with HTTP 500: reachable, but no run can start on it.
BROKEN_SERVER_RUN = """
import os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Broken(BaseHTTPRequestHandler):
    def fail(self):
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = fail

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["WANDB_BASE_URL"] = f"http://127.0.0.1:{server.server_port}"
from dsum.infra.tracking import default_wandb_logger, ensure_wandb_mode

print("mode", ensure_wandb_mode(), flush=True)
run = default_wandb_logger(sys.argv[1], "abc123", False).experiment
run.log({"x": 1})
print("run mode", run.settings.mode, flush=True)
run.finish()
"""


@pytest.mark.slow
def test_a_run_the_server_cannot_start_goes_offline(home, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(home, PYTHONPATH=str(REPO), WANDB_API_KEY="f" * 40, DSUM_WANDB_INIT_TIMEOUT="10")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", BROKEN_SERVER_RUN, str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mode online" in proc.stdout and "run mode offline" in proc.stdout
    assert time.monotonic() - started < 120
    assert "could not start online" in proc.stderr and "wandb sync" in proc.stderr
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
