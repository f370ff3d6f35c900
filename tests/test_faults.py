"""Hard faults: divergence, kills mid-write, full and read-only disks, hostile sweep YAMLs, secrets in sweep
values, an unreachable W&B server."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from dsum.callbacks.divergence import NonFiniteLossGuard, TrainingDiverged
from dsum.callbacks.record import RunRecord
from tests.conftest import REPO, tmpfs_mounted


# ------------------------------------------------------------------------------------------- divergence
class Regression(L.LightningModule):
    """y = 2x on a few points; `nan_batches` get a NaN input (so a NaN loss) on those batch indices."""

    def __init__(self, lr: float, nan_batches: tuple[int, ...] = (), fused: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.lr = lr
        self.fused = fused
        self.nan_batches = set(nan_batches)
        self.weights_seen: list[float] = []

    def training_step(self, batch, batch_idx):
        x = batch.clone()
        if batch_idx in self.nan_batches:
            x[0] = float("nan")
        self.weights_seen.append(float(self.layer.weight))
        return torch.nn.functional.mse_loss(self.layer(x), 2 * x)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=self.fused) if self.lr < 1 else \
            torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.linspace(1, 8, 8).unsqueeze(1), batch_size=2)


def fit(tmp_path: Path, model: L.LightningModule, guard: NonFiniteLossGuard, epochs: int = 2,
        plugins: list | None = None) -> dict:
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        callbacks=[RunRecord("r1"), guard], plugins=plugins)
    trainer.fit(model)
    return json.loads((tmp_path / "run.json").read_text())


def test_a_huge_learning_rate_fails_the_run_as_diverged(tmp_path) -> None:
    with pytest.raises(TrainingDiverged, match=r"training diverged: train/loss is NaN or infinite at step \d+"):
        fit(tmp_path, Regression(lr=1e9), NonFiniteLossGuard())
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["history"][-1]["reason"] == "diverged"
    assert "model.learning_rate" in record["history"][-1]["error"]


def test_a_bounded_number_of_nonfinite_steps_is_skipped_without_updating(tmp_path) -> None:
    model = Regression(lr=0.05, nan_batches=(1,))  # one NaN step per epoch, two epochs
    record = fit(tmp_path / "ok", model, NonFiniteLossGuard(max_nonfinite_steps=2))
    assert record["status"] == "completed"
    # The weight seen by the step after a skipped one equals the weight of the skipped step: no update.
    seen = model.weights_seen
    assert seen[2] == seen[1] and seen[6] == seen[5] and seen[1] != seen[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())

    with pytest.raises(TrainingDiverged, match="after 1 skipped step"):
        fit(tmp_path / "over", Regression(lr=0.05, nan_batches=(1,)), NonFiniteLossGuard(max_nonfinite_steps=1))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_a_skipped_step_under_16_mixed_keeps_the_weights_with_a_fused_optimizer(tmp_path, fused) -> None:
    """16-mixed's GradScaler (a CPU one here): Lightning does not unscale for a fused AdamW, so dropping the
    gradients left `scaler.update()` with "No inf checks were recorded prior to update"."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    model = Regression(lr=0.05, nan_batches=(1,), fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    record = fit(tmp_path, model, NonFiniteLossGuard(max_nonfinite_steps=2),
                 plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert record["status"] == "completed"
    seen = model.weights_seen
    assert seen[2] == seen[1] and seen[6] == seen[5] and seen[1] != seen[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------- hostile sweep YAMLs
def alias_bomb(levels: int = 8, width: int = 9) -> str:
    """A sweep whose `parameters` expand to width**levels values through nested aliases (a few hundred bytes)."""
    lines = ["name: bomb", "program: main.py", "method: grid", "parameters:",
             f"  a0: &a0 {{values: [{', '.join(['lol'] * width)}]}}"]
    for level in range(1, levels + 1):
        lines.append(f"  a{level}: &a{level} {{values: [{', '.join([f'*a{level - 1}'] * width)}]}}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_expansion(tmp_path) -> None:
    from dsum.sweep.spec import SweepSpecError, load_sweep

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 1000
    started = time.monotonic()
    with pytest.raises(SweepSpecError, match=r"bomb\.yaml: expands to more than 100,000 YAML nodes"):
        load_sweep(path)
    assert time.monotonic() - started < 0.5
    # Aliases that stay small are still plain YAML.
    path.write_text("name: ok\nmethod: grid\nparameters:\n  a: &v {values: [1, 2]}\n  b: *v\n")
    assert load_sweep(path)["parameters"]["b"] == {"values": [1, 2]}
    path.write_text("name: loop\nparameters: &p\n  inner: *p\n")
    with pytest.raises(SweepSpecError, match="refers to itself"):
        load_sweep(path)


# ------------------------------------------------------------------------------------------- secrets in sweep values
SECRET = "hf_fakeSECRETtoken1234567890"


def test_a_secret_sweep_value_is_refused_and_written_nowhere(tmp_path, monkeypatch) -> None:
    import yaml

    from dsum.infra.secrets import SecretValueError
    from dsum.sweep.local import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSUM_SWEEP_DIR", raising=False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    (tmp_path / "main.py").write_text("raise SystemExit('never run')\n")
    sweep = {"name": "leak", "program": "main.py", "method": "grid",
             "command": ["${env}", "${interpreter}", "${program}", "fit", "${args}"],
             "parameters": {"learning_rate": {"values": [0.1]},
                            "data.tokenizer_kwargs": {"value": {"token": SECRET}},
                            "data.source_prefix": {"values": ["a", f"Bearer {SECRET}"]}}}
    path = tmp_path / "leak.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SecretValueError) as error:
        run_local(path, count=1)
    message = str(error.value)
    assert SECRET not in message
    assert "parameters.data.tokenizer_kwargs.value.token holds the value of $HF_TOKEN" in message
    assert "parameters.data.source_prefix.values[1]" in message and "environment" in message
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p != path and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_printed_output_is_redacted_including_a_failed_parse(tmp_path) -> None:
    script = (
        "import sys\n"
        "from dsum.infra.secrets import redact_output\n"
        "redact_output()\n"
        "from jsonargparse import ArgumentParser\n"
        "parser = ArgumentParser()\n"
        "parser.add_argument('--batch_size', type=int)\n"
        f"parser.parse_args(['--batch_size={SECRET}'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_TOKEN": SECRET})
    assert proc.returncode == 2
    assert "batch_size" in proc.stderr and "<redacted>" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


# ------------------------------------------------------------------------------------------- kills mid-write
# Saves checkpoints (a ~16 MB tensor filled with the save's number) to <dir>/last.ckpt in a loop, through the
# CheckpointIO named by argv[2]; prints the number of each finished save.
CHECKPOINT_WRITER = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {repo!r})
target = Path(sys.argv[1]) / "last.ckpt"
if sys.argv[2] == "lightning":
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO as IO
else:
    from dsum.infra.checkpoint_io import AtomicCheckpointIO as IO
io = IO()
start = int(sys.argv[3])
for n in range(start, start + 1000):
    io.save_checkpoint({{"n": n, "weights": torch.full((4 * 1024 * 1024,), float(n))}}, target)
    print(n, flush=True)
"""

# Exports a model-like directory (config + ~8 MB of weights, all tagged with the export's number) in a loop.
EXPORT_WRITER = """
import sys, json
from pathlib import Path
sys.path.insert(0, {repo!r})
from dsum.infra.files import atomic_write_dir
target = Path(sys.argv[1]) / "best_model"
start = int(sys.argv[3])
for n in range(start, start + 1000):
    def fill(d, n=n):
        (d / "config.json").write_text(json.dumps({{"n": n}}))
        (d / "model.bin").write_bytes(n.to_bytes(4, "little") * (2 * 1024 * 1024))
    atomic_write_dir(target, fill)
    print(n, flush=True)
"""


@pytest.fixture()
def other_fs(tmp_path):
    """A directory on its own small filesystem (tmpfs, when mounting is allowed), else under tmp_path."""
    target = tmp_path / "fs"
    target.mkdir()
    with tmpfs_mounted(target, "size=256m"):
        yield target


def check_checkpoint(directory: Path) -> int | None:
    path = directory / "last.ckpt"
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)  # a truncated file fails here
    assert bool((state["weights"] == state["n"]).all()), "a checkpoint mixing two saves"
    return state["n"]


def check_export(directory: Path) -> int | None:
    from dsum.infra.files import is_complete_dir

    path = directory / "best_model"
    if not path.exists():
        return None
    assert is_complete_dir(path)
    n = json.loads((path / "config.json").read_text())["n"]
    assert (path / "model.bin").read_bytes() == n.to_bytes(4, "little") * (2 * 1024 * 1024)
    return n


def kill_during_writes(directory: Path, writer: str, io_name: str, check, kills: int, seed: int) -> None:
    """Start `writer`, kill -9 it at a random instant, check the target, repeat; then check that the next
    writer's first save removed every temp file the killed ones left."""
    rng = random.Random(seed)
    script = directory.parent / "writer.py"
    script.write_text(writer.format(repo=str(REPO)))
    tmpdir = directory.parent / "tmpdir"  # the writers' TMPDIR: a save must leave nothing there either
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    last_good = None
    for round_ in range(kills):
        proc = subprocess.Popen([sys.executable, str(script), str(directory), io_name, str(round_ * 1000)],
                                stdout=subprocess.PIPE, text=True, env=env)
        proc.stdout.readline()  # past start-up: the kill lands among saves
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        found = check(directory)
        assert found is not None or last_good is None, "the previous good file is gone"
        last_good = found if found is not None else last_good
    # The next run's first save cleans up what the killed ones left behind.
    proc = subprocess.Popen([sys.executable, str(script), str(directory), io_name, "999000"],
                            stdout=subprocess.PIPE, text=True, env=env)
    proc.stdout.readline()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    live = {f".{proc.pid}."}
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".")
                 and not any(tag in p.name for tag in live)]
    assert leftovers == [], leftovers
    assert list(tmpdir.iterdir()) == []
    check(directory)


@pytest.mark.slow
def test_killing_checkpoint_writes_never_leaves_a_truncated_checkpoint(other_fs) -> None:
    kill_during_writes(other_fs, CHECKPOINT_WRITER, "dsum", check_checkpoint, kills=10, seed=1)


@pytest.mark.slow
def test_killing_exports_never_leaves_a_partial_export_or_staging_dirs(other_fs) -> None:
    kill_during_writes(other_fs, EXPORT_WRITER, "dsum", check_export, kills=8, seed=2)


# ------------------------------------------------------------------------------------------- full and read-only disks
@pytest.fixture()
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed: see the RLIMIT_FSIZE test instead)."""
    target = tmp_path / "tiny"
    target.mkdir()
    with tmpfs_mounted(target, "size=1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        yield target


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_path_and_errno(tiny_fs) -> None:
    import errno

    from dsum.infra.checkpoint_io import AtomicCheckpointIO
    from dsum.infra.faults import fatal_message

    target = tiny_fs / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"n": 1, "w": torch.ones(1000)}, target)
    with pytest.raises(OSError) as error:
        io.save_checkpoint({"n": 2, "w": torch.ones(1024 * 1024)}, target)  # 4 MiB: does not fit
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert torch.load(target, weights_only=True)["n"] == 1  # the previous good checkpoint, whole
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no partial temp file left
    assert fatal_message(RuntimeError("wrapped")) is None
    try:
        raise RuntimeError("Lightning's wrapper") from error.value
    except RuntimeError as wrapped:
        assert fatal_message(wrapped) == (f"dsum: cannot write {target}: [Errno 28] No space left on device "
                                          "(free some space or point trainer.default_root_dir elsewhere)")


def test_a_full_or_read_only_run_dir_is_refused_before_loggers_start(tiny_fs) -> None:
    import errno

    from dsum.infra.files import atomic_write_json, check_writable

    run_dir = tiny_fs / "run"
    atomic_write_json(run_dir / "run.json", {"status": "running"})
    (tiny_fs / "fill").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # leaves less than the probe needs
    with pytest.raises(OSError) as error:
        check_writable(run_dir)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(run_dir)
    (tiny_fs / "fill").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    with pytest.raises(OSError) as error:
        check_writable(run_dir)
    assert error.value.errno == errno.EROFS and error.value.filename == str(run_dir)
    with pytest.raises(OSError):
        atomic_write_json(run_dir / "run.json", {"status": "failed"})
    assert json.loads((run_dir / "run.json").read_text()) == {"status": "running"}  # the last good state


def test_a_size_limited_write_keeps_the_previous_checkpoint(tmp_path) -> None:
    # Without root: RLIMIT_FSIZE makes writes past 1 MiB fail (EFBIG), as a full disk would.
    script = (
        "import resource, signal, sys, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from dsum.infra.checkpoint_io import AtomicCheckpointIO\n"
        "from dsum.infra.faults import fatal_message\n"
        "io = AtomicCheckpointIO()\n"
        f"target = {str(tmp_path / 'last.ckpt')!r}\n"
        "io.save_checkpoint({'n': 1, 'w': torch.ones(1000)}, target)\n"
        "try:\n"
        "    io.save_checkpoint({'n': 2, 'w': torch.ones(1 << 20)}, target)\n"
        "except OSError as error:\n"
        "    print(fatal_message(error))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.strip() == f"dsum: cannot write {tmp_path / 'last.ckpt'}: [Errno 27] File too large", proc.stderr
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ------------------------------------------------------------------------------------------- one-line errors
def test_a_setting_out_of_range_is_one_line_however_deeply_wrapped() -> None:
    from dsum.infra.faults import fatal_message
    from dsum.models.base import GenerationSettings, SummarizerBase

    try:
        try:
            SummarizerBase._check_settings(-1.0, 0.0, 0.0, 0.0, GenerationSettings())
        except ValueError as error:  # what jsonargparse does with it: the whole config in the message
            raise ValueError("Does not validate against any of the Union subtypes\n" + "x" * 5000) from error
    except ValueError as wrapped:
        assert fatal_message(wrapped) == "dsum: model.learning_rate=-1.0 is out of range"
    assert fatal_message(ValueError("a library's own error")) is None  # not dsum's: the traceback stays


# ------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_written_files_and_dirs_get_the_umasks_modes(tmp_path, umask) -> None:
    from dsum.infra.checkpoint_io import AtomicCheckpointIO
    from dsum.infra.files import atomic_write_dir, atomic_write_json

    previous = os.umask(umask)
    try:
        record = atomic_write_json(tmp_path / "run.json", {"status": "completed"})
        export = atomic_write_dir(tmp_path / "best_model", lambda d: (d / "config.json").write_text("{}"))
        checkpoint = tmp_path / "checkpoints" / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"n": 1}, checkpoint)
    finally:
        os.umask(previous)
    assert (record.stat().st_mode & 0o777) == 0o666 & ~umask
    assert (checkpoint.stat().st_mode & 0o777) == 0o666 & ~umask
    assert (export.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((export / ".complete").stat().st_mode & 0o777) == 0o666 & ~umask


# ------------------------------------------------------------------------------------------- whole runs (main.py)
MAIN = REPO / "main.py"


def fit_command(tiny: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(MAIN), "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
            f"--model.pretrained={tiny}", f"--trainer.default_root_dir={run_dir}",
            f"--data.train_file={REPO / 'data' / 'sample' / 'train.csv'}",
            f"--data.val_file={REPO / 'data' / 'sample' / 'dev.csv'}",
            f"--data.cache_dir={run_dir.parent / 'cache'}", "--data.val_subset=4",
            "--model.generation.max_new_tokens=4", "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
            *extra]


def run_main(command: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ.update({"PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path / "tmpdir"), "WANDB_MODE": "offline",
                    "WANDB_SILENT": "true", **env})
    environ = {k: v for k, v in environ.items() if v != ""}
    (tmp_path / "tmpdir").mkdir(exist_ok=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=environ, cwd=REPO)


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_fit_with_a_huge_learning_rate_fails_as_diverged_and_exports_nothing(tiny_models, tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = run_main(fit_command(tiny_models["bart"], run_dir, "--model.learning_rate=1e9", "--trainer.logger=false"),
                    tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last_line(proc).startswith("dsum: training diverged: train/loss is NaN or infinite at step")
    assert "Traceback" not in proc.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["history"][-1]["reason"] == "diverged"
    assert not (run_dir / "best_model").exists() and "best_model" not in record


@pytest.mark.slow
def test_a_negative_learning_rate_is_one_line(tiny_models, tmp_path) -> None:
    proc = run_main(fit_command(tiny_models["bart"], tmp_path / "run", "--model.learning_rate=-1",
                                "--trainer.logger=false"), tmp_path)
    assert proc.returncode == 1
    assert last_line(proc) == "dsum: model.learning_rate=-1.0 is out of range"
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 2000, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line(tiny_models, tmp_path, tiny_fs) -> None:
    run_dir = tiny_fs / "run"  # 1 MiB: the first checkpoint does not fit
    proc = run_main(fit_command(tiny_models["bart"], run_dir), tmp_path)
    assert proc.returncode == 1
    line = last_line(proc)
    assert line.startswith(f"dsum: cannot write {run_dir}") and "[Errno 28] No space left on device" in line, \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("wandb") < 20
    assert json.loads((run_dir / "run.json").read_text())["status"] in ("running", "failed")  # whole, parseable
    leftovers = [p for p in run_dir.rglob(".*") if ".tmp" in p.name or ".staging." in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_a_read_only_run_dir_stops_before_anything_is_written(tiny_models, tmp_path, tiny_fs) -> None:
    run_dir = tiny_fs / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"status": "completed"}')
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    proc = run_main(fit_command(tiny_models["bart"], run_dir), tmp_path)
    assert proc.returncode == 1
    assert last_line(proc) == f"dsum: cannot write {run_dir}: [Errno 30] Read-only file system", proc.stderr[-3000:]
    assert (run_dir / "run.json").read_text() == '{"status": "completed"}'
    assert list((tmp_path / "tmpdir").iterdir()) == []  # W&B never fell back to a directory outside the run


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_wandb_with_credentials_goes_offline_and_trains(tiny_models, tmp_path) -> None:
    run_dir = tmp_path / "run"
    server = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    proc = run_main(fit_command(tiny_models["bart"], run_dir), tmp_path, WANDB_MODE="", WANDB_API_KEY="f" * 40,
                    WANDB_BASE_URL=server, DSUM_WANDB_INIT_TIMEOUT="10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 600
    lines = [line for line in proc.stderr.splitlines() if "unreachable" in line]
    assert len(lines) == 1 and server in lines[0] and "wandb sync" in lines[0]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["wandb"]["mode"] == "offline"
    assert list((run_dir / "wandb").glob("offline-run-*"))

    proc = run_main(fit_command(tiny_models["bart"], tmp_path / "online"), tmp_path, WANDB_MODE="online",
                    WANDB_API_KEY="f" * 40, WANDB_BASE_URL=server)
    assert proc.returncode == 1
    assert last_line(proc).startswith(f"dsum: W&B server {server} unreachable")
