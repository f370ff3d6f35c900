"""Runs that cannot succeed stop before they write anything, in one line naming the path or key; runs that
end oddly say so (tests/test_faults.py has the hard faults)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dsum.cli import DsumCLI
from dsum.infra.faults import report_faults
from tests.conftest import sample_run_args, tmpfs_mounted


def run(stage: str, model: Path, run_dir: Path, *extra: str, config: str = "quickstart.yaml") -> None:
    with report_faults():
        DsumCLI(args=[stage, *sample_run_args(config, model, run_dir, "--data.val_subset=4",
                                              "--model.generation.max_new_tokens=4", *extra)])


def fails(capsys: pytest.CaptureFixture[str], stage: str, model: Path, run_dir: Path, *extra: str,
          config: str = "quickstart.yaml") -> str:
    """The one line a run that must fail ends with."""
    with pytest.raises(SystemExit) as done:
        run(stage, model, run_dir, *extra, config=config)
    assert done.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def fit_one_step(model: Path, run_dir: Path) -> dict:
    run("fit", model, run_dir, "--trainer.max_steps=1", "--trainer.limit_val_batches=1")
    return json.loads((run_dir / "run.json").read_text())


def test_resuming_last_without_a_checkpoint_stops_instead_of_training_from_scratch(tiny_models, tmp_path,
                                                                                  capsys) -> None:
    line = fails(capsys, "fit", tiny_models["bart"], tmp_path / "run", "--ckpt_path=last")
    assert line == (f"dsum: --ckpt_path last: no checkpoint to resume from ({tmp_path / 'run/checkpoints/last.ckpt'} "
                    "does not exist); check trainer.default_root_dir, or drop --ckpt_path to start a new run")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_family_stops_before_the_finished_record_is_touched(tiny_models, tmp_path,
                                                                                   capsys) -> None:
    run_dir = tmp_path / "run"
    before = fit_one_step(tiny_models["bart"], run_dir)
    assert before["status"] == "completed" and (run_dir / "checkpoints/last.ckpt").is_file()
    record = (run_dir / "run.json").read_bytes()
    line = fails(capsys, "fit", tiny_models["t5"], run_dir, "--ckpt_path=last", "--trainer.max_steps=2",
                 config="quickstart-t5.yaml")
    assert line.startswith(f"dsum: --ckpt_path {run_dir / 'checkpoints/last.ckpt'} does not fit this model (")
    assert line.endswith("it was written by another model family, size or LoRA setting")
    assert (run_dir / "run.json").read_bytes() == record  # still the finished run's record


@pytest.fixture()
def read_only_dir(tmp_path):
    """A directory nobody can write: a read-only tmpfs (as root), else one without write permission."""
    target = tmp_path / "ro"
    target.mkdir()
    with tmpfs_mounted(target, "ro,size=1m") as mounted:
        if not mounted:
            target.chmod(0o500)
            if os.access(target, os.W_OK):
                pytest.skip("cannot make a directory read-only here")
        yield target
    target.chmod(0o700)


def test_an_unwritable_submission_path_stops_before_predicting(tiny_models, tmp_path, capsys, read_only_dir) -> None:
    line = fails(capsys, "predict", tiny_models["bart"], tmp_path / "run",
                 f"--submission.path={read_only_dir / 'submission.csv'}")
    assert line.startswith(f"dsum: cannot write {read_only_dir}"), line
    assert "Read-only file system" in line or "Permission denied" in line
    assert not (tmp_path / "run" / "predict.json").exists()  # stopped before predicting


def test_a_submission_path_that_is_a_directory_stops_before_predicting(tiny_models, tmp_path, capsys) -> None:
    line = fails(capsys, "predict", tiny_models["bart"], tmp_path / "run", f"--submission.path={tmp_path}")
    assert line.startswith(f"dsum: cannot write {tmp_path}") or line == f"dsum: [Errno 21] is a directory: '{tmp_path}'"


@pytest.mark.parametrize("name, message", [
    ("file", "is an existing file; give a directory"),
    ("x" * 300, "cannot be used: File name too long"),
    ("file/run", "cannot be used: a part of it is a file"),
])
def test_a_run_dir_that_cannot_be_a_directory_is_one_line(tiny_models, tmp_path, capsys, name, message) -> None:
    (tmp_path / "file").write_text("not a directory")
    line = fails(capsys, "fit", tiny_models["bart"], tmp_path / name)
    assert line == f"dsum: trainer.default_root_dir={tmp_path / name} {message}"


def test_a_fit_that_ends_before_its_first_validation_says_nothing_was_exported(tiny_models, tmp_path,
                                                                              capsys) -> None:
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning) as warned:
        run("fit", tiny_models["bart"], run_dir, "--trainer.max_steps=1", "--trainer.limit_val_batches=0")
    said = [str(w.message) for w in warned if str(w.message).startswith("dsum:")]
    assert len(said) == 1 and said[0].startswith("dsum: no validation ran in this fit"), said
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["best_model"] is None
    assert record["export_skipped"].startswith("no validation ran in this fit (it ended at step 1")
    assert not (run_dir / "best_model").exists()


def test_a_module_whose_base_loads_later_is_checked_on_what_exists(tmp_path) -> None:
    """A 4-bit base loads in `configure_model`: its tensors cannot be compared before, the rest still is."""
    import torch

    from dsum.infra.run_checks import check_checkpoint_fits

    class Deferred(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = None
            self.head = torch.nn.Linear(2, 2)

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model.layer.weight": torch.zeros(8, 8), "head.weight": torch.zeros(2, 2),
                               "head.bias": torch.zeros(2)}}, checkpoint)
    check_checkpoint_fits(checkpoint, Deferred())
    torch.save({"state_dict": {"model.layer.weight": torch.zeros(8, 8), "head.weight": torch.zeros(3, 2)}}, checkpoint)
    with pytest.raises(ValueError, match=r"head.weight is \(3, 2\) there and \(2, 2\) here"):
        check_checkpoint_fits(checkpoint, Deferred())


def test_a_checkpoint_of_another_lora_rank_stops_before_the_record_is_touched(tiny_llm_random, tmp_path,
                                                                             capsys) -> None:
    run_dir = tmp_path / "run"
    with report_faults():
        DsumCLI(args=["fit", *sample_run_args("quickstart-llm.yaml", tiny_llm_random, run_dir, "--model.lora.r=4",
                                              "--trainer.max_steps=1", "--trainer.limit_val_batches=0")])
    record = (run_dir / "run.json").read_bytes()
    with pytest.raises(SystemExit):
        with report_faults():
            DsumCLI(args=["fit", *sample_run_args("quickstart-llm.yaml", tiny_llm_random, run_dir, "--model.lora.r=8",
                                                  "--trainer.max_steps=2", "--ckpt_path=last")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"dsum: --ckpt_path {run_dir / 'checkpoints/last.ckpt'} does not fit this model (")
    assert "lora_A" in line and "(4, " in line and "(8, " in line, line
    assert (run_dir / "run.json").read_bytes() == record
