"""Tokenizer loading: a checkpoint that transformers rebuilds wrongly is caught, and `tokenizer_json` loads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import GPT2Config

from dsum.data import DialogueDataModule
from dsum.data.tokenizer import check_round_trip
from tests.conftest import SAMPLE

# KoGPT2's model card: its repository declares no special tokens, so they are given when loading.
KOGPT2_SPECIALS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


@pytest.fixture(scope="module")
def kogpt2_like(tiny_models, tmp_path_factory) -> Path:
    """Like skt/kogpt2-base-v2: a character-level BPE tokenizer.json (Metaspace, not byte-level) next to a GPT-2
    config.json, and no tokenizer_config.json. transformers 5 builds a GPT2Tokenizer for it, whose byte-level
    pre-tokenizer does not match the vocabulary."""
    directory = tmp_path_factory.mktemp("kogpt2_like")
    shutil.copyfile(tiny_models["bart"] / "tokenizer.json", directory / "tokenizer.json")
    GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=5000, bos_token_id=0, eos_token_id=2).save_pretrained(directory)
    return directory


def data(tokenizer_name: Path, tmp_path: Path, **kwargs) -> DialogueDataModule:
    return DialogueDataModule(tokenizer_name=str(tokenizer_name), train_file=str(SAMPLE / "train.csv"),
                              val_file=str(SAMPLE / "dev.csv"), cache_dir=str(tmp_path / "cache"), **kwargs)


def test_a_tokenizer_that_drops_korean_stops_the_run(kogpt2_like, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"loses \d+% of the data's characters") as error:
        data(kogpt2_like, tmp_path)
    assert "GPT2Tokenizer" in str(error.value) and "data.tokenizer_loader=tokenizer_json" in str(error.value)


def test_tokenizer_json_loads_it_as_saved(kogpt2_like, tmp_path) -> None:
    dm = data(kogpt2_like, tmp_path, tokenizer_loader="tokenizer_json", tokenizer_kwargs=KOGPT2_SPECIALS)
    text = dm.splits["train"].dialogues[0]
    ids = dm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert dm.tokenizer.decode(ids) == text
    assert dm.tokenizer.eos_token == "</s>" and dm.tokenizer.pad_token == "<pad>"
    assert dm.tokenizer.tokenize("#Person1#") == ["#Person1#"]  # masks stay one token


class DropsCharacters:
    """A stand-in tokenizer whose decode loses the given characters."""

    def __init__(self, lost: str) -> None:
        self.lost = set(lost)

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[str]]:
        return {"input_ids": texts}

    def batch_decode(self, texts: list[str]) -> list[str]:
        return ["".join("<unk>" if c in self.lost else c for c in text) for text in texts]


def test_round_trip_tolerates_a_few_unknown_characters_not_a_lost_script() -> None:
    texts = ["#Person1#: 오늘 회의는 3시에 시작합니다 ☺"] * 3
    check_round_trip(DropsCharacters("☺"), texts, "ok")  # 1 of 25 characters is <unk>: fine
    hangul = "".join(sorted({c for c in texts[0] if "가" <= c <= "힣"}))
    with pytest.raises(ValueError, match=r"The tokenizer of garbled \(DropsCharacters\) loses \d+%"):
        check_round_trip(DropsCharacters(hangul), texts, "garbled")
