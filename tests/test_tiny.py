"""Tests for dsum.tiny.build: offline tiny BART / T5 / GPT-2 models and their tokenizers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from dsum.tiny import build as tiny

REPO = Path(__file__).resolve().parents[1]
CSV_CANDIDATES = (REPO / "data" / "sample" / "train.csv", Path("/work/shared/data/dev.csv"))


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    """A private copy of the bundled sample (or the shared dev set), so concurrent edits cannot race."""
    source = next((p for p in CSV_CANDIDATES if p.is_file()), None)
    if source is None:
        pytest.skip(f"no dialogue CSV found at any of {[str(p) for p in CSV_CANDIDATES]}")
    target = tmp_path_factory.mktemp("csv") / "train.csv"
    shutil.copyfile(source, target)
    return target


@pytest.fixture(scope="module")
def frame(csv_path) -> pd.DataFrame:
    return pd.read_csv(csv_path, keep_default_na=False)


@pytest.fixture(scope="module")
def models(csv_path, tmp_path_factory) -> dict[str, Path]:
    return tiny.build_all(csv_path, tmp_path_factory.mktemp("tiny"))


def _auto_model(family: str, path: Path):
    auto = AutoModelForCausalLM if family == "gpt2" else AutoModelForSeq2SeqLM
    return auto.from_pretrained(path).eval()


def test_build_all_writes_hf_layout(models):
    assert set(models) == set(tiny.FAMILIES)
    for family, path in models.items():
        files = {p.name for p in path.iterdir()}
        expected = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
        assert expected <= files, family


@pytest.mark.parametrize(
    "family, expected",
    [
        (
            "bart",
            {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"},
        ),
        ("t5", {"bos_token": None, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}),
        (
            "gpt2",
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None, "unk_token": "<|endoftext|>"},
        ),
    ],
)
def test_tokenizer_round_trips_through_auto_tokenizer(models, family, expected):
    tok = AutoTokenizer.from_pretrained(models[family])
    assert tok.is_fast
    assert tok.model_max_length == 1024
    for attribute, value in expected.items():
        assert getattr(tok, attribute) == value, attribute
    assert set(tiny.DEFAULT_MASKS) <= set(tok.all_special_tokens)


def test_t5_uses_t5_special_token_ids(models):
    tok = AutoTokenizer.from_pretrained(models["t5"])
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_every_mask_is_one_known_token(models, frame, family):
    tok = AutoTokenizer.from_pretrained(models[family])
    masks = tiny.discover_masks(list(frame["dialogue"]) + list(frame["summary"]))
    ids = {}
    for mask in masks:
        encoded = tok(mask, add_special_tokens=False)["input_ids"]
        assert len(encoded) == 1 and encoded[0] != tok.unk_token_id, (mask, encoded)
        ids[mask] = encoded[0]
    assert len(set(ids.values())) == len(masks)
    # Glued to Korean particles, a mask must still come out whole.
    glued = tok("#Person1#은 #Person2#에게", add_special_tokens=False)["input_ids"]
    assert ids["#Person1#"] in glued and ids["#Person2#"] in glued


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_korean_text_encodes_without_unk(models, frame, family):
    tok = AutoTokenizer.from_pretrained(models[family])
    texts = list(frame["dialogue"][:50]) + ["처음 보는 글자: 龘, 이모지 😀, 탭\t끝"]
    for text in texts:
        assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"], text[:40]


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_newlines_and_masks_survive_decode(models, frame, family):
    tok = AutoTokenizer.from_pretrained(models[family])
    text = "#Person1#: 안녕하세요, 오늘 어떠세요? \n#Person2#: 좋아요.\n#Person1#: 다행이네요."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for dialogue in frame["dialogue"][:20]:
        decoded = tok.decode(tok(dialogue, add_special_tokens=False)["input_ids"])
        assert decoded.count("\n") == dialogue.count("\n")


def test_skip_special_tokens_also_drops_masks(models):
    """Documents the trap callers must avoid when decoding summaries."""
    tok = AutoTokenizer.from_pretrained(models["bart"])
    ids = tok("#Person1#이 웃습니다.")["input_ids"]
    assert tok.decode(ids) == "<s>#Person1#이 웃습니다.</s>"
    assert "#Person1#" not in tok.decode(ids, skip_special_tokens=True)


def test_post_processing_per_family(models):
    bart = AutoTokenizer.from_pretrained(models["bart"])
    ids = bart("안녕하세요")["input_ids"]
    assert ids[0] == bart.bos_token_id and ids[-1] == bart.eos_token_id

    t5 = AutoTokenizer.from_pretrained(models["t5"])
    ids = t5("안녕하세요")["input_ids"]
    assert ids[-1] == t5.eos_token_id and t5.eos_token_id not in ids[:-1]

    gpt2 = AutoTokenizer.from_pretrained(models["gpt2"])
    assert gpt2("안녕하세요")["input_ids"] == gpt2("안녕하세요", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_forward_with_labels_and_generate(models, frame, family):
    tok = AutoTokenizer.from_pretrained(models[family])
    model = _auto_model(family, models[family])
    assert model.config.vocab_size == len(tok)
    source = tok([frame["dialogue"][0]], return_tensors="pt", truncation=True, max_length=128)
    if family == "gpt2":
        labels = source["input_ids"]
    else:
        labels = tok([frame["summary"][0]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(**source, labels=labels).loss
    # A random model is close to uniform over the vocabulary.
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(len(tok))) < 2.0
    generated = model.generate(**source, max_new_tokens=5, do_sample=False)
    if family == "gpt2":
        assert source["input_ids"].shape[1] < generated.shape[1] <= source["input_ids"].shape[1] + 5
        assert torch.equal(generated[:, : source["input_ids"].shape[1]], source["input_ids"])
    else:
        assert 2 <= generated.shape[1] <= 6
        assert generated[0, 0].item() == model.generation_config.decoder_start_token_id


def test_generation_configs(models):
    bart = _auto_model("bart", models["bart"]).generation_config
    assert bart.decoder_start_token_id == bart.eos_token_id == 2 and bart.pad_token_id == 1
    t5 = _auto_model("t5", models["t5"]).generation_config
    assert t5.decoder_start_token_id == t5.pad_token_id == 0 and t5.eos_token_id == 1
    gpt2 = _auto_model("gpt2", models["gpt2"]).generation_config
    assert gpt2.pad_token_id == gpt2.eos_token_id is not None
    assert bart.max_new_tokens == t5.max_new_tokens == gpt2.max_new_tokens == 64


def test_sizes_follow_arguments(csv_path, tmp_path):
    built = tiny.build_all(csv_path, tmp_path, d_model=256, layers=3, vocab_size=3000, max_positions=512)
    bart = json.loads((built["bart"] / "config.json").read_text())
    assert (bart["d_model"], bart["encoder_layers"], bart["decoder_layers"]) == (256, 3, 3)
    assert (bart["encoder_attention_heads"], bart["encoder_ffn_dim"], bart["max_position_embeddings"]) == (4, 512, 512)
    t5 = json.loads((built["t5"] / "config.json").read_text())
    assert (t5["d_model"], t5["num_layers"], t5["num_decoder_layers"], t5["num_heads"] * t5["d_kv"]) == (256, 3, 3, 256)
    gpt2 = json.loads((built["gpt2"] / "config.json").read_text())
    assert (gpt2["n_embd"], gpt2["n_layer"], gpt2["n_positions"], gpt2["n_inner"]) == (256, 3, 512, 512)
    for family, path in built.items():
        tok = AutoTokenizer.from_pretrained(path)
        config = json.loads((path / "config.json").read_text())
        assert config["vocab_size"] == len(tok) <= 3000, family
        assert tok.model_max_length == 512


def test_same_seed_same_model_other_seed_other_weights(csv_path, tmp_path):
    first = tiny.build_tiny_model("t5", tmp_path / "a", csv_path, seed=1)
    again = tiny.build_tiny_model("t5", tmp_path / "b", csv_path, seed=1)
    other = tiny.build_tiny_model("t5", tmp_path / "c", csv_path, seed=2)
    assert (first / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    weights = [AutoModelForSeq2SeqLM.from_pretrained(p).state_dict() for p in (first, again, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["shared.weight"], weights[2]["shared.weight"])


def test_tokenizer_is_the_same_in_a_new_process(csv_path, tmp_path):
    """The BPE trainer's hash order changes per process; with a vocabulary small enough that rare characters
    are left out of the alphabet (ties in their counts), the tokenizer must still not change."""
    script = (
        "import sys; from dsum.tiny.build import build_tokenizer; "
        "sys.stdout.write(build_tokenizer(sys.argv[1], 'bart', vocab_size=1150).backend_tokenizer.to_str())"
    )
    built = [
        subprocess.run([sys.executable, "-c", script, str(csv_path)], cwd=REPO, capture_output=True, text=True,
                       check=True, timeout=300).stdout
        for _ in range(3)
    ]
    alphabet_limit = (1150 - 256) // 2  # an upper bound: special tokens come off the budget first
    assert len(set("".join(pd.read_csv(csv_path, keep_default_na=False)["dialogue"]))) > alphabet_limit
    assert built[0] and built[1] == built[0] and built[2] == built[0]


def test_seeding_leaves_global_rng_alone(csv_path, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_model("gpt2", tmp_path, csv_path)
    assert torch.equal(torch.rand(3), expected)


def test_discover_masks_puts_defaults_first_then_found_sorted():
    masks = tiny.discover_masks(["#Person9#: 안녕 #Zeta#", "#Alpha# #Person1# # not # #한글#"])
    assert masks[: len(tiny.DEFAULT_MASKS)] == list(tiny.DEFAULT_MASKS)
    assert masks[len(tiny.DEFAULT_MASKS):] == ["#Alpha#", "#Person9#", "#Zeta#"]


def test_errors_name_the_culprit(csv_path, tmp_path):
    with pytest.raises(ValueError, match="'llama'"):
        tiny.build_tiny_model("llama", tmp_path, csv_path)
    with pytest.raises(ValueError, match="d_model=64 is not divisible by heads=5"):
        tiny.build_tiny_model("bart", tmp_path, csv_path, heads=5)
    with pytest.raises(ValueError, match="vocab_size=300 is too small"):
        tiny.build_tokenizer(csv_path, "t5", vocab_size=300)
    no_text = tmp_path / "ids.csv"
    no_text.write_text("fname,topic\ntrain_0,x\n")
    with pytest.raises(ValueError, match=r"ids\.csv.*none of \['dialogue', 'summary'\]"):
        tiny.build_tokenizer(no_text, "bart")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        tiny.build_tokenizer(tmp_path / "missing.csv", "bart")
    with pytest.raises(ValueError, match="do not look like"):
        tiny.build_tokenizer(csv_path, "bart", masks=["Person1"])


def test_cli_builds_requested_families(csv_path, tmp_path):
    from jsonargparse import CLI

    args = ["--csv", str(csv_path), "--out", str(tmp_path), "--families", "gpt2", "--d_model", "32", "--layers", "1"]
    CLI(tiny.main, as_positional=False, args=args)
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2"]
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert (config["n_embd"], config["n_layer"]) == (32, 1)
    with pytest.raises(ValueError, match="'llama'"):
        tiny.main(csv=str(csv_path), out=str(tmp_path), families="gpt2,llama")
