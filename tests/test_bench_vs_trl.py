"""The helpers of ``tests/benchmarks/bench_vs_trl.py`` (dsum against TRL's SFTTrainer): the examples every row
trains on, the shared dev loss, the decoding and the figures the tables report.

The benchmark itself is never run by the test suite (it takes minutes); its pure helpers decide what the rows
compare, so they are checked here on hand-made inputs and on the small random tiny chat LLM.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

BENCH = Path(__file__).parent / "benchmarks" / "bench_vs_trl.py"


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_vs_trl", None)


class BigramLM(torch.nn.Module):
    """A causal LM whose logits at a position depend on that position's token only (so padding cannot matter)."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, 5)
        self.head = torch.nn.Linear(5, vocab)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


def test_trl_rows_join_prompt_and_summary_and_mark_the_summary(vs) -> None:
    rows = vs.trl_rows([([1, 2, 3], [4, 5]), ([6], [7])])
    assert rows == {"input_ids": [[1, 2, 3, 4, 5], [6, 7]], "completion_mask": [[0, 0, 0, 1, 1], [0, 1]]}


def test_examples_digest_ignores_order_and_sees_a_changed_token(vs) -> None:
    a = [([1, 2], [3]), ([4], [5, 6])]
    assert vs.examples_digest(a) == vs.examples_digest(list(reversed(a)))
    assert vs.examples_digest(a) != vs.examples_digest([([1, 2], [3]), ([4], [5, 7])])
    # The prompt/summary boundary is part of an example: moving it changes what the loss covers.
    assert vs.examples_digest([([1, 2], [3])]) != vs.examples_digest([([1], [2, 3])])


def test_length_sorted_batches_are_longest_first_and_cover_every_index(vs) -> None:
    batches = vs.length_sorted_batches([3, 9, 1, 9, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_dev_loss_is_summed_summary_token_loss_over_summary_tokens(vs) -> None:
    model = BigramLM()
    examples = [([1, 2, 3], [4, 5]), ([6], [2]), ([3, 3, 3, 3], [1, 2, 6])]
    expected_total, count = 0.0, 0
    with torch.no_grad():
        for prompt, summary in examples:  # one example at a time, no padding: position t predicts token t+1
            ids = torch.tensor([prompt + summary])
            logits = model(ids).logits[0]
            for t in range(len(prompt), len(prompt) + len(summary)):
                expected_total -= float(torch.log_softmax(logits[t - 1], -1)[ids[0, t]])
                count += 1
    for batch_size in (1, 2, 32):  # batching and padding change nothing
        assert vs.dev_loss(model, examples, pad_id=0, batch_size=batch_size) == pytest.approx(expected_total / count)
    assert not model.training


def test_throughput_leaves_out_the_warmup_steps(vs) -> None:
    ends = [10.0, 11.0, 11.5, 12.0, 13.0]  # step ends
    figures = vs.throughput(ends, tokens=[999, 999, 100, 100, 200], samples=[8, 8, 4, 4, 8], warmup=2)
    assert figures["tokens_per_s"] == pytest.approx(400 / 2.0)  # steps 3-5, from the end of step 2 to that of 5
    assert figures["samples_per_s"] == pytest.approx(16 / 2.0)
    assert figures["median_step_s"] == pytest.approx(0.5)
    assert vs.throughput(ends[:2], [1, 1], [1, 1], warmup=2)["tokens_per_s"] is None


def test_warmup_steps_round_down_as_dsum_does(vs) -> None:
    assert [vs.warmup_steps(n) for n in (5, 19, 20, 40, 100)] == [0, 0, 1, 2, 5]


def test_distinct_share_flags_one_summary_for_everything(vs) -> None:
    assert vs.distinct_share(["a", "a", "a", "a"]) == 0.25
    assert vs.distinct_share(["a", "b", "c", "a"]) == 0.75
    assert vs.distinct_share([]) == 0.0


def test_summaries_and_errors_of_rows(vs) -> None:
    runs = {"dsum/default": [{"tokens_per_s": 10.0, "init": "x"}, {"tokens_per_s": 30.0, "init": "x"},
                             {"tokens_per_s": 20.0, "init": "x"}],
            "trl/packing": [{"error": "ValueError: nope"}, {"error": "ValueError: nope"}]}
    summary = vs.summarize(runs, ["tokens_per_s"])
    assert summary["dsum/default"] == {"tokens_per_s": 20.0, "runs": 3, "init": "x"}
    assert summary["trl/packing"] == {"error": "ValueError: nope"}
    assert vs.best_row({**summary, "trl/default": {"tokens_per_s": 5.0}, "trl/padding_free": {"tokens_per_s": 7.0}},
                       "trl/") == "trl/padding_free"
    assert vs.interleave(["a", "b"], 2) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    text = "Traceback (most recent call last):\n  File x\nTypeError: SFTConfig.__init__() got an unexpected keyword\n"
    assert vs.error_line(text) == "TypeError: SFTConfig.__init__() got an unexpected keyword"


def test_every_row_trains_on_the_dsum_rows_examples_and_lora(vs, tiny_llm_random, tmp_path) -> None:
    """The TRL and bare rows' data module is the dsum rows' (configs/quickstart-llm.yaml's data settings), so all
    rows see identical examples, token for token; the LoRA config trains the mask rows of embeddings and head."""
    from transformers import AutoModelForCausalLM

    from dsum.data import DialogueDataModule

    data = yaml.safe_load(vs.CONFIG.read_text(encoding="utf-8"))["data"]
    dsum_dm = DialogueDataModule(str(tiny_llm_random), train_file=str(vs.TRAIN_CSV), val_file=str(vs.DEV_CSV),
                                 decoder_only=True, prompt_template=data["prompt_template"],
                                 encoder_max_len=data["encoder_max_len"], decoder_max_len=data["decoder_max_len"],
                                 cache_dir=str(tmp_path / "dsum"))
    dsum_dm.setup("fit")
    dm = vs.chat_datamodule(tiny_llm_random, tmp_path / "trl")
    for split in ("train", "val"):
        ours, theirs = vs.split_examples(dm, split), vs.split_examples(dsum_dm, split)
        assert ours == theirs and len(ours) > 0
    train = vs.split_examples(dm, "train")
    rows = vs.trl_rows(train)
    assert rows["input_ids"][0] == train[0][0] + train[0][1]
    assert train[0][1][-1] == dm.tokenizer.convert_tokens_to_ids("<|im_end|>")  # the summary ends the turn

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_random)
    base_rows = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(len(dm.tokenizer))
    ids = vs.mask_token_ids(dm.tokenizer, base_rows)
    assert dm.tokenizer.convert_tokens_to_ids("#Person1#") in ids
    config = vs.lora_config(model, ids)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert config.trainable_token_indices == {"model.embed_tokens": ids, "lm_head": ids}


def test_decoded_summaries_keep_masks_and_drop_other_special_tokens(vs, tiny_llm_random, tmp_path) -> None:
    dm = vs.chat_datamodule(tiny_llm_random, tmp_path)
    tok = dm.tokenizer
    ids = tok("#Person1#이 웃는다.", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert vs.decode_summaries(tok, [ids]) == ["#Person1#이 웃는다."]
    config = vs.generation_config(tok, num_beams=1, model_stops=[tok.pad_token_id])
    assert config.max_new_tokens == 64 and config.do_sample is False and config.num_beams == 1
    # dsum's stops: the base model's generation config's eos ids, then eos and the end-of-turn token.
    assert config.eos_token_id == [tok.pad_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    assert vs.generation_config(tok, num_beams=4).early_stopping is True


def test_ratio_lines_compare_dsum_with_trls_best_and_name_the_bounds(vs) -> None:
    train = {"trl/default": {"tokens_per_s": 100.0, "dev_loss": 1.0}, "trl/length_grouped": {"tokens_per_s": 200.0,
             "dev_loss": 1.1}, "trl/packing": {"error": "x"}, "dsum/default": {"tokens_per_s": 500.0, "dev_loss": 1.05},
             "bare/length_grouped": {"tokens_per_s": 550.0}}
    gen = {"gen/hf_sorted@1": {"summaries_per_s": 10.0, "seconds": 6.0},
           "gen/dsum_generate@1": {"summaries_per_s": 12.0},
           "gen/hf_sorted_merged@1": {"summaries_per_s": 15.0, "forward_s": 3.0}}
    runs = {"gen/dsum_generate@1": [{"generated": [[1, 2], [3]]}], "gen/hf_sorted@1": [{"generated": [[1, 2], [4]]}]}
    lines = vs.ratio_lines(train, gen, runs, [1, 4])
    assert lines[0] == ("training dsum/default/trl/length_grouped (TRL's best) = 2.50x tokens/s; "
                        "dev loss 1.0500 vs 1.1000")
    assert lines[1] == "bound: bare loop/trl/length_grouped = 2.75x, bare loop/dsum/default = 1.10x"
    assert "generation beams 1: gen/dsum_generate/gen/hf_sorted = 1.20x" in lines
    assert "generation beams 1: bound (merged weights, no time outside the model's forward) = 2.00x the sorted HF loop" \
        in lines
    assert "generation beams 1: same ids dsum vs HF sorted: 1/2" in lines
    assert not any("beams 4" in line for line in lines)  # no HF row for 4 beams: nothing to compare
