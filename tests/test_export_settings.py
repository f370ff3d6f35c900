"""An export carries its inference settings: moved elsewhere and run with a plain config, it predicts and scores
as it did; the command line still overrides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dsum.cli import DsumCLI
from dsum.eval.inference_settings import INFERENCE_FILE, apply_saved_settings, given_keys
from tests.conftest import sample_run_args

NON_DEFAULT = ["--model.generation.max_new_tokens=9", "--model.generation.min_new_tokens=6",
               "--model.postprocess.cut_unfinished=true", "--model.postprocess.collapse_repeats=true",
               "--model.postprocess.mask_spacing=false", "--model.rouge_tokenizer=whitespace",
               "--model.rouge_references=max", "--model.remove_tokens=[</s>]"]


def run(stage: str, model: Path, run_dir: Path, *extra: str) -> DsumCLI:
    return DsumCLI(args=[stage, *sample_run_args("quickstart.yaml", model, run_dir, "--data.val_subset=6", *extra)])


@pytest.fixture(scope="module")
def moved_export(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    # A learning rate that leaves the random weights as they are: they write "하 하 하 ...", which the
    # post-processing visibly changes.
    run("fit", tiny_models["bart"], root / "fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--model.learning_rate=1e-12", *NON_DEFAULT)
    moved = root / "elsewhere" / "model"
    shutil.copytree(root / "fit" / "best_model", moved)
    shutil.rmtree(root / "fit")  # nothing of the run is left to guess from
    return root, moved


def test_a_moved_export_predicts_and_validates_with_its_own_settings(moved_export) -> None:
    root, moved = moved_export
    saved = json.loads((moved / INFERENCE_FILE).read_text())
    assert saved["postprocess"] == {"mask_spacing": False, "collapse_repeats": True, "cut_unfinished": True}
    assert saved["generation"]["max_new_tokens"] == 9 and saved["rouge_tokenizer"] == "whitespace"

    plain = run("predict", moved, root / "plain")
    explicit = run("predict", moved, root / "explicit", *NON_DEFAULT)
    model = plain.model
    assert (model.generation.max_new_tokens, model.generation.min_new_tokens) == (9, 6)
    assert (model.postprocess.cut_unfinished, model.postprocess.collapse_repeats, model.postprocess.mask_spacing) \
        == (True, True, False)
    assert model.remove_tokens == ["</s>"]
    plain_out, explicit_out = (pd.read_csv(root / name / "submission.csv", keep_default_na=False)["summary"].tolist()
                               for name in ("plain", "explicit"))
    assert plain_out == explicit_out and all(plain_out)
    run("predict", moved, root / "defaults", "--model.postprocess.collapse_repeats=false",
        "--model.generation.min_new_tokens=0", "--model.generation.max_new_tokens=100")
    defaults_out = pd.read_csv(root / "defaults" / "submission.csv", keep_default_na=False)["summary"].tolist()
    assert defaults_out != plain_out  # the carried settings matter
    assert explicit.model.val_metrics.rouge.settings() == plain.model.val_metrics.rouge.settings() == {
        **plain.model.val_metrics.rouge.settings(), "tokenizer": "whitespace", "references": "max"}


def test_the_command_line_beats_the_export(moved_export) -> None:
    root, moved = moved_export
    cli = run("predict", moved, root / "override", "--model.generation.max_new_tokens=20",
              "--model.postprocess.cut_unfinished=false")
    assert (cli.model.generation.max_new_tokens, cli.model.generation.min_new_tokens) == (20, 6)
    assert cli.model.postprocess.cut_unfinished is False and cli.model.postprocess.collapse_repeats is True


def test_settings_are_taken_field_by_field_unless_given() -> None:
    init_args = {"generation": {"num_beams": 4, "max_new_tokens": 100}, "postprocess": {"cut_unfinished": False},
                 "rouge_tokenizer": "mecab", "remove_tokens": []}
    saved = {"generation": {"num_beams": 1, "max_new_tokens": 30}, "postprocess": {"cut_unfinished": True},
             "rouge_tokenizer": "kiwi", "remove_tokens": ["<usr>"]}
    given = given_keys(["--config", "x.yaml", "--model.init_args.generation.num_beams=5", "--model.rouge_tokenizer",
                        "mecab"])
    taken = apply_saved_settings(init_args, saved, given)
    assert taken == ["model.generation.max_new_tokens", "model.postprocess.cut_unfinished", "model.remove_tokens"]
    assert init_args["generation"] == {"num_beams": 4, "max_new_tokens": 30}
    assert init_args["rouge_tokenizer"] == "mecab" and init_args["remove_tokens"] == ["<usr>"]


def test_the_ensemble_runs_a_moved_export_without_any_config(moved_export) -> None:
    from dsum.eval.ensemble import predict_with_model
    from tests.conftest import SAMPLE

    root, moved = moved_export
    assert not list(moved.parent.glob("config.yaml"))  # nothing to guess from
    out = predict_with_model(moved, SAMPLE / "test.csv", root / "ensemble_source.csv", None, root / "ensemble_run")
    run("predict", moved, root / "reference")
    ours, reference = (pd.read_csv(path, keep_default_na=False)["summary"].tolist()
                       for path in (out, root / "reference" / "submission.csv"))
    assert ours == reference


def test_a_secret_in_the_settings_is_masked_in_the_saved_file(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from dsum.eval.inference_settings import save_inference_settings
    from dsum.eval.postprocess import PostprocessSettings
    from dsum.models.base import GenerationSettings

    secret = "hf_s3cr3t_value_for_the_test"
    monkeypatch.setenv("HF_TOKEN", secret)
    module = SimpleNamespace(hparams=SimpleNamespace(rouge_tokenizer="mecab", rouge_references="mean"),
                             generation=GenerationSettings(), postprocess=PostprocessSettings(),
                             remove_tokens=[secret, "<unk>"], input_layout=None)
    saved = json.loads(save_inference_settings(module, tmp_path).read_text(encoding="utf-8"))
    assert secret not in json.dumps(saved)
    assert saved["remove_tokens"] == ["<redacted>", "<unk>"]
