"""The LM head runs only at labelled positions, and the loss and its gradients are unchanged."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsum.data import DialogueDataModule
from dsum.models import CausalLMSummarizer, Seq2SeqSummarizer
from dsum.models.heads import output_head_only_at
from tests.conftest import SAMPLE

FAMILIES = {
    "bart": (Seq2SeqSummarizer, {}),
    "t5": (Seq2SeqSummarizer, {"source_prefix": "summarize: "}),
    "gpt2": (CausalLMSummarizer, {"source_suffix": "\n요약: "}),
}


@contextlib.contextmanager
def full_head(model, keep):
    """Stand-in for output_head_only_at that computes logits everywhere (the reference path)."""
    yield False


def first_batch(family: str, tiny: Path, tmp_path: Path, label_smoothing: float = 0.0):
    cls, data_kwargs = FAMILIES[family]
    dm = DialogueDataModule(
        tokenizer_name=str(tiny), train_file=str(SAMPLE / "train.csv"), val_file=str(SAMPLE / "dev.csv"), batch_size=6,
        batching="random", encoder_max_len=128, decoder_max_len=48, cache_dir=str(tmp_path / "cache"),
        decoder_only=cls is CausalLMSummarizer, **data_kwargs,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = cls(pretrained=str(tiny), tokenizer=dm.tokenizer, label_smoothing=label_smoothing)
    module.model.eval()  # no dropout: both paths must see the same network
    return module, batch


def loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gathered_head_gives_the_same_loss_and_gradients(family, label_smoothing, tiny_models, tmp_path,
                                                         monkeypatch) -> None:
    module, batch = first_batch(family, tiny_models[family], tmp_path, label_smoothing)
    logits, labels = module.logits_and_labels(batch)
    summary_tokens = int((batch["labels"] != -100).sum())
    # Only summary tokens reach the head: (tokens, vocab), not (batch, length, vocab).
    assert logits.shape == (summary_tokens, module.model.get_output_embeddings().out_features)
    assert labels.shape == (summary_tokens,) and bool((labels != -100).all())

    gathered_loss, gathered_grads = loss_and_grads(module, batch)
    monkeypatch.setattr(f"{type(module).__module__}.output_head_only_at", full_head)
    full_logits, _ = module.logits_and_labels(batch)
    assert full_logits.ndim == 3  # the reference path really is the full one
    full_loss, full_grads = loss_and_grads(module, batch)

    assert gathered_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    assert gathered_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(gathered_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bart_gathered_loss_matches_the_models_own_loss(tiny_models, tmp_path) -> None:
    module, batch = first_batch("bart", tiny_models["bart"], tmp_path)
    own = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert module.loss(batch).item() == pytest.approx(own.loss.item(), rel=1e-5)
    # final_logits_bias is still added: a non-zero bias changes the gathered logits by exactly that bias.
    logits, labels = module.logits_and_labels(batch)
    module.model.final_logits_bias.fill_(0.5)
    shifted, _ = module.logits_and_labels(batch)
    torch.testing.assert_close(shifted, logits + 0.5)
    assert F.cross_entropy(shifted, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_the_hook_is_removed_and_shape_mismatches_are_named(tiny_models, tmp_path) -> None:
    module, batch = first_batch("bart", tiny_models["bart"], tmp_path)
    head = module.model.get_output_embeddings()
    wrong = torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(RuntimeError, match=r"BartForConditionalGeneration: expected output-head input of shape \(3, 5\)"):
        with output_head_only_at(module.model, wrong):
            module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"])
    assert not head._forward_pre_hooks
    full = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert full.logits.shape[:2] == batch["labels"].shape


def one_example(batch: dict, i: int) -> dict:
    return {key: value[i : i + 1] for key, value in batch.items()}


@pytest.mark.parametrize("gathered", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_example_losses_split_the_batch_loss_by_example(family, gathered, tiny_models, tmp_path, monkeypatch) -> None:
    module, batch = first_batch(family, tiny_models[family], tmp_path, label_smoothing=0.1)
    if not gathered:
        monkeypatch.setattr(f"{type(module).__module__}.output_head_only_at", full_head)
    with torch.no_grad():
        totals, counts = module.example_losses(batch)
        assert counts.tolist() == (batch["labels"] != -100).sum(dim=1).tolist()
        assert (totals.sum() / counts.sum()).item() == pytest.approx(module.loss(batch).item(), rel=1e-5)
        # Each row belongs to its own example: the same as that example's loss computed alone.
        alone = [module.loss(one_example(batch, i)).item() for i in range(len(counts))]
    assert (totals / counts).tolist() == pytest.approx(alone, rel=1e-4)
    assert len(set(alone)) > 1  # distinct per-example losses, so a mix-up would show
