"""DialogueDataModule: masks as single tokens, -100 labels, fnames kept, truncation counted, cache."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd
import pytest

from dsum.data import DialogueDataModule
from dsum.data.io import DataError
from tests.conftest import SAMPLE, write_csv


def make(tiny_models: dict[str, Path], tmp_path: Path, family: str = "bart", **kwargs) -> DialogueDataModule:
    settings = dict(
        tokenizer_name=str(tiny_models[family]),
        train_file=str(SAMPLE / "train.csv"),
        val_file=str(SAMPLE / "dev.csv"),
        predict_file=str(SAMPLE / "test.csv"),
        batch_size=8,
        eval_batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    settings.update(kwargs)
    return DialogueDataModule(**settings)


def test_masks_become_single_special_tokens(tiny_models, tmp_path) -> None:
    extra = "#CarNumber9#"
    dm = make(tiny_models, tmp_path, extra_special_tokens=[extra])
    tok = dm.tokenizer
    assert extra in dm.masks and "#PhoneNumber#" in dm.masks and "#Person1#" in dm.masks
    for mask in dm.masks:
        ids = tok(f"{mask}은 좋아요", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids[0]) == mask
        assert ids[0] != tok.unk_token_id


def test_masks_found_only_in_data_are_added(tiny_models, tmp_path) -> None:
    train = write_csv(
        tmp_path / "train.csv",
        "fname,dialogue,summary,topic\nx_0,\"#Person1#: 제 차는 #VehicleId# 입니다.\",#Person1#의 차 #VehicleId#.,t\n",
    )
    dm = make(tiny_models, tmp_path, train_file=str(train), val_file=str(train), extra_special_tokens=[])
    assert "#VehicleId#" in dm.masks
    assert len(dm.tokenizer("#VehicleId#", add_special_tokens=False)["input_ids"]) == 1


def test_labels_padded_with_minus_100_and_fnames_kept(tiny_models, tmp_path) -> None:
    dm = make(tiny_models, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert labels.shape[0] == ids.shape[0] == 8
    assert (labels == dm.tokenizer.pad_token_id).sum() == 0
    lengths = (labels != -100).sum(dim=1)
    assert (labels[:, : int(lengths.min())] != -100).all()
    assert (labels == -100).any()  # some padding in a batch of different lengths
    assert ((ids == dm.tokenizer.pad_token_id) == (mask == 0)).all()
    # Every target ends with eos, so the model learns to stop.
    eos = dm.tokenizer.eos_token_id
    assert all(int(row[n - 1]) == eos for row, n in zip(labels, lengths))
    assert all(len(refs) == 1 for refs in batch["references"])

    dm.setup("predict")
    fnames = [f for b in dm.predict_dataloader() for f in b["fname"]]
    assert sorted(fnames) == sorted(dm.splits["predict"].table.fnames)
    assert "labels" not in next(iter(dm.predict_dataloader()))


def test_truncation_is_counted_and_keeps_special_tokens(tiny_models, tmp_path, caplog) -> None:
    dm = make(tiny_models, tmp_path, encoder_max_len=32, decoder_max_len=8)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    counts = dm.truncation.counts["train"]
    assert counts["source"] == counts["examples"] == 300
    assert 0 < counts["target"] <= 300
    features = dm.splits["train"].features
    assert max(features["source_length"]) == 32 and max(features["target_length"]) == 8
    bos, eos = dm.tokenizer.bos_token_id, dm.tokenizer.eos_token_id
    assert all(ids[0] == bos and ids[-1] == eos for ids in features["input_ids"][:20])


def test_decoder_only_layout_appends_eos_and_suffix(tiny_models, tmp_path) -> None:
    dm = make(tiny_models, tmp_path, family="gpt2", decoder_only=True, source_suffix="\n요약: ",
              encoder_max_len=40)
    assert dm.tokenizer.pad_token == dm.tokenizer.eos_token  # GPT-2 has no pad token: handled
    dm.setup("fit")
    features = dm.splits["train"].features
    suffix = dm.tokenizer("\n요약: ", add_special_tokens=False)["input_ids"]
    for ids, labels in zip(features["input_ids"][:10], features["labels"][:10]):
        assert ids[-len(suffix):] == suffix  # truncation cut the dialogue, not the separator
        assert labels[-1] == dm.tokenizer.eos_token_id


def test_tokenized_cache_hit_then_invalidated(tiny_models, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = make(tiny_models, tmp_path)
    first.setup("fit")
    files = sorted(p.name for p in cache.glob("*.arrow"))
    assert len(files) == 2

    calls = []
    second = make(tiny_models, tmp_path)
    original = second._tokenize
    second._tokenize = lambda batch: calls.append(1) or original(batch)  # type: ignore[method-assign]
    second.setup("fit")
    assert calls == []  # both splits came from the cache
    assert second.splits["train"].features["input_ids"] == first.splits["train"].features["input_ids"]

    for changed in (dict(encoder_max_len=256), dict(source_prefix="요약: ")):
        third = make(tiny_models, tmp_path, **changed)
        third.setup("fit")
        assert len(list(cache.glob("*.arrow"))) > len(files)
        files = sorted(p.name for p in cache.glob("*.arrow"))

    # Same path, one dialogue edited: the file's content is the key, so the edit is tokenized.
    edited = tmp_path / "train.csv"
    edited.write_bytes((SAMPLE / "train.csv").read_bytes())
    before = make(tiny_models, tmp_path, train_file=str(edited))
    before.setup("fit")
    frame = pd.read_csv(edited, dtype=str, keep_default_na=False)
    frame.loc[0, "dialogue"] = "#Person1#: 완전히 새로운 대화입니다."
    frame.to_csv(edited, index=False)
    after = make(tiny_models, tmp_path, train_file=str(edited))
    after.setup("fit")
    assert after.splits["train"].table.sha256 == hashlib.sha256(edited.read_bytes()).hexdigest()
    assert after.splits["train"].table.sha256 != before.splits["train"].table.sha256
    assert after.splits["train"].features["input_ids"][0] != before.splits["train"].features["input_ids"][0]
    assert after.splits["train"].features["input_ids"][1:] == before.splits["train"].features["input_ids"][1:]


def test_val_subset_is_fixed(tiny_models, tmp_path) -> None:
    a = make(tiny_models, tmp_path, val_subset=10, seed=1)
    b = make(tiny_models, tmp_path, val_subset=10, seed=2)
    idx = lambda dm: sorted(int(i) for batch in dm.val_dataloader() for i in batch["index"])  # noqa: E731
    a.setup("fit"), b.setup("fit")
    assert idx(a) == idx(b) and len(idx(a)) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(batch_size=0), "data.batch_size must be a positive integer, got 0"),
        (dict(batching="token_budget"), "data.batching=token_budget needs data.max_tokens"),
        (dict(batching="token_budget", max_tokens=100), "data.max_tokens=100 is smaller than one full-length"),
        (dict(max_tokens=-5), "data.max_tokens must be a positive integer"),
    ],
)
def test_bad_settings_fail_at_start(tiny_models, tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        make(tiny_models, tmp_path, **kwargs)


def test_bad_file_fails_when_built(tiny_models, tmp_path) -> None:
    bad = write_csv(tmp_path / "bad.csv", "fname,dialogue,summary\na,대화,\n")
    with pytest.raises(DataError, match=r"bad\.csv: empty or NaN 'summary' in row 1"):
        make(tiny_models, tmp_path, val_file=str(bad))


def test_stage_without_its_file_is_a_clear_error(tiny_models, tmp_path) -> None:
    dm = make(tiny_models, tmp_path, predict_file=None)
    with pytest.raises(ValueError, match="`predict` needs data.predict_file"):
        dm.setup("predict")


def test_a_column_is_read_in_one_piece_in_the_selected_order() -> None:
    from datasets import Dataset

    from dsum.data.datamodule import column

    features = Dataset.from_dict({"source_length": [7, 3, 9, 4], "source_truncated": [True, False, True, False],
                                  "input_ids": [[1], [2], [3], [4]]}).select([2, 0, 3])
    lengths = column(features, "source_length")
    assert lengths.tolist() == [9, 7, 4] and lengths.dtype.kind == "i"
    assert int(column(features, "source_truncated").sum()) == 2


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False)])
def test_batches_are_page_locked_only_when_training_on_cuda(tiny_models, tmp_path, device, pinned) -> None:
    from types import SimpleNamespace

    import torch

    dm = make(tiny_models, tmp_path)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0,  # what the loaders read from Lightning's trainer
                                 strategy=SimpleNamespace(root_device=torch.device(device, 0)))
    dm.setup("fit")
    assert dm.train_dataloader().pin_memory is pinned
    assert dm.val_dataloader().pin_memory is pinned
