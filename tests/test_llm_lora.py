"""InstructSummarizer with LoRA on the tiny chat LLM (CPU): what is trained, what checkpoints hold, resume,
adapter and merged exports, QLoRA's early error without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dsum.cli import DsumCLI
from dsum.data import DialogueDataModule
from tests.conftest import SAMPLE, sample_run_args


def llm_args(tiny: Path, run_dir: Path, *extra: str) -> list[str]:
    return sample_run_args("quickstart-llm.yaml", tiny, run_dir, "--data.batch_size=8", "--data.eval_batch_size=8", *extra)


def short_fit(tiny: Path, run_dir: Path, *extra: str) -> DsumCLI:
    """Two training steps; validation on 8 dev examples with 8 new tokens."""
    return DsumCLI(args=["fit", *llm_args(tiny, run_dir, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                                          "--data.val_subset=8", "--model.generation.max_new_tokens=8", *extra)])


@pytest.fixture(scope="module")
def lora_run(tiny_llm_random, tmp_path_factory) -> tuple[DsumCLI, Path]:
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    return short_fit(tiny_llm_random, run_dir, "--model.learning_rate=0.05", "--model.merge_on_export=true"), run_dir


def test_only_adapter_and_new_token_rows_train_base_stays_byte_identical(lora_run, tiny_llm_random) -> None:
    fit, _ = lora_run
    module = fit.model
    tokenizer = fit.datamodule.tokenizer
    base = load_file(tiny_llm_random / "model.safetensors")
    rows = base["model.embed_tokens.weight"].shape[0]
    new_ids = module.new_token_ids(rows)
    masks = {tokenizer.convert_tokens_to_ids(m) for m in ("#Person1#", "#Person2#", "#PhoneNumber#")}
    assert masks <= set(new_ids) and min(new_ids) >= rows  # the tiny LLM's tokenizer had no masks

    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    trainable_count, total = module.parameter_counts
    assert trainable_count == sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert 0 < trainable_count < total / 2

    # Frozen base weights: byte-identical to the checkpoint on disk after training.
    state = module.model.get_base_model().state_dict()
    for key, original in base.items():
        wrapped = [key, *(key.replace(".weight", f".{inner}.weight") for inner in ("base_layer", "token_adapter.base_layer"))]
        current = state[next(k for k in wrapped if k in state)]
        assert torch.equal(current[: len(original)], original), key  # embedding and head: the base's rows

    # New token rows changed, in the input embedding and in the untied output head; old rows did not.
    emb = module.model.get_input_embeddings()
    head = module.model.get_output_embeddings()
    for layer in (emb, head):
        values = layer.token_adapter.trainable_tokens_delta["default"]
        original = layer.token_adapter.base_layer.weight[new_ids]
        assert not torch.allclose(values, original), "new token rows did not train"
        merged = layer.token_adapter.get_merged_weights(["default"])
        assert torch.equal(merged[:rows], layer.token_adapter.base_layer.weight[:rows])


def test_checkpoint_holds_only_trainable_weights(lora_run, tiny_llm_random, tmp_path) -> None:
    fit, run_dir = lora_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trainable = {f"model.{n}" for n, p in fit.model.model.named_parameters() if p.requires_grad}
    model_keys = {k for k in checkpoint["state_dict"] if k.startswith("model.")}
    assert model_keys == trainable
    assert checkpoint["dsum_adapter_only"] is True

    full_dir = tmp_path / "full"
    short_fit(tiny_llm_random, full_dir, "--model.lora=null", "--outputs.export_best=false")
    full = (full_dir / "checkpoints" / "last.ckpt").stat().st_size
    adapter = (run_dir / "checkpoints" / "last.ckpt").stat().st_size
    assert adapter < 0.3 * full, (adapter, full)


def test_resume_from_last_continues_at_the_same_step(tiny_llm_random, tmp_path) -> None:
    run_dir = tmp_path / "resume"
    common = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--data.val_subset=4",
              "--model.generation.max_new_tokens=4", "--outputs.export_best=false"]
    first = DsumCLI(args=["fit", *llm_args(tiny_llm_random, run_dir, "--trainer.max_epochs=1", *common)])
    assert first.trainer.global_step == 2
    saved = {n: p.detach().clone() for n, p in first.model.model.named_parameters() if p.requires_grad}
    # A checkpoint restores the adapter exactly (the base comes from model.pretrained).
    restored = DsumCLI(args=["validate", *llm_args(tiny_llm_random, tmp_path / "validate", *common),
                             f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    current = dict(restored.model.model.named_parameters())
    assert all(torch.equal(current[n], saved[n]) for n in saved)

    resumed = DsumCLI(args=["fit", *llm_args(tiny_llm_random, run_dir, "--trainer.max_epochs=2", "--ckpt_path=last",
                                             *common)])
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4


def test_adapter_and_merged_exports_predict_like_the_trained_model(lora_run, tmp_path) -> None:
    fit, run_dir = lora_run
    export = run_dir / "best_model"
    names = {p.name for p in export.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json", "tokenizer.json",
            "prompt_template.json", "merged"} <= names
    assert "model.safetensors" not in names  # no full base in the adapter export
    adapter_weights = load_file(export / "adapter_model.safetensors")
    assert not any("embed_tokens.weight" in k or k.endswith("lm_head.weight") for k in adapter_weights)
    assert json.loads((export / "prompt_template.json").read_text())["name"] == "chat"
    assert Path(json.loads((export / "adapter_config.json").read_text())["base_model_name_or_path"]).is_absolute()

    # In memory (the best checkpoint's weights, as exported) vs the adapter export vs the merged export.
    few = tmp_path / "few.csv"
    pd.read_csv(SAMPLE / "test.csv").head(12).to_csv(few, index=False)
    predict_args = [f"--data.predict_file={few}", "--model.generation.max_new_tokens=8"]
    data = DialogueDataModule(fit.model.hparams.pretrained, predict_file=str(few), decoder_only=True,
                              prompt_template="chat", eval_batch_size=8, cache_dir=str(tmp_path / "cache"))
    rows = fit.trainer.predict(fit.model, datamodule=data, return_predictions=True)
    expected = {index: summary for batch in rows for index, _, summary in batch}
    assert len(expected) == 12
    # Validation loss is the sensitive check (a tiny model's few greedy tokens may coincide by chance).
    trained_loss = json.loads((run_dir / "run.json").read_text())["final_metrics"]["val/loss"]
    for name, pretrained, extra in (("adapter", export, []), ("merged", export / "merged", ["--model.lora=null"])):
        submission = tmp_path / f"{name}.csv"
        DsumCLI(args=["predict", *llm_args(Path(pretrained), tmp_path / name, *predict_args, *extra),
                      f"--submission.path={submission}"])
        frame = pd.read_csv(submission, keep_default_na=False, index_col=0)
        assert dict(enumerate(frame["summary"])) == expected, name
        DsumCLI(args=["validate", *llm_args(Path(pretrained), tmp_path / name, "--data.val_subset=8",
                                            "--model.generation.max_new_tokens=8", *extra)])
        loss = json.loads((tmp_path / name / "validate.json").read_text())["final_metrics"]["val/loss"]
        assert loss == pytest.approx(trained_loss, rel=1e-4), name
    base = DsumCLI(args=["validate", *llm_args(fit.model.hparams.pretrained, tmp_path / "base", "--data.val_subset=8",
                                               "--model.generation.max_new_tokens=8", "--model.lora=null")])
    assert base.trainer.callback_metrics["val/loss"].item() != pytest.approx(trained_loss, rel=1e-3)


def test_qlora_without_cuda_fails_before_any_weights_load(tiny_llm_random, tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the quantization check")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    # (jsonargparse reports an error raised while building the model as a ValueError carrying its message.)
    for option in ("--model.quantization=nf4", "--model.optimizer=paged_adamw_8bit"):
        with pytest.raises((RuntimeError, ValueError), match="no CUDA device") as error:
            DsumCLI(args=["fit", *llm_args(tiny_llm_random, tmp_path / "qlora", option)])
        assert option.removeprefix("--") in str(error.value) and "--model.quantization=null" in str(error.value)
    with pytest.raises(ValueError, match="needs model.lora"):
        DsumCLI(args=["fit", *llm_args(tiny_llm_random, tmp_path / "q2", "--model.quantization=int8",
                                       "--model.lora=null")])


def test_missing_bitsandbytes_says_what_to_install(monkeypatch) -> None:
    import importlib.util

    from dsum.models.instruct import LoraSettings, check_bitsandbytes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"bitsandbytes, which is not installed: pip install 'dsum\[qlora\]'"):
        check_bitsandbytes("fp4", "adamw", LoraSettings())
    check_bitsandbytes(None, "adamw", None)  # nothing quantized, nothing paged: no bitsandbytes needed


@pytest.mark.parametrize("setting, message", [
    ({"r": 0}, "model.lora.r must be a positive integer, got 0"),
    ({"dropout": 1.5}, "model.lora.dropout must be in [0, 1), got 1.5"),
    ({"alpha": -8}, "model.lora.alpha must be a positive number, got -8"),
])
def test_lora_settings_out_of_range_are_one_line_naming_key_and_value(tiny_llm_random, setting, message) -> None:
    from dsum.infra.faults import fatal_message
    from dsum.models import InstructSummarizer
    from dsum.models.instruct import LoraSettings

    with pytest.raises(ValueError) as error:
        InstructSummarizer(str(tiny_llm_random), lora=LoraSettings(**setting), rouge_tokenizer="whitespace")
    assert fatal_message(error.value) == f"dsum: {message}"
