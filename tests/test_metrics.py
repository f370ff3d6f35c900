"""Korean-aware ROUGE (tokenizers, agreement with rouge-score, multi-reference max) and PooledMean:
de-duplication and DDP sync."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import unicodedata
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rouge_score.rouge_scorer import RougeScorer

from dsum.metrics import (
    ROUGE_TYPES,
    KoreanRouge,
    MorphemeTokenizer,
    PooledMean,
    WhitespaceTokenizer,
    get_tokenizer,
    rouge_scores,
)

PAIRS = [  # (prediction, reference)
    ("#Person1#은 내일 공항에 가기로 했습니다.", "#Person1#은 내일 아침 공항에 가기로 결정했습니다."),
    ("#Person2#는 #Person1#에게 #PhoneNumber#로 전화하라고 말합니다.", "#Person2#가 #Person1#에게 전화번호를 알려줍니다."),
    ("두 사람은 저녁 메뉴에 대해 이야기합니다.", "두 사람은 저녁으로 무엇을 먹을지 이야기합니다."),
    ("Jimmy는 운동을 하러 갑니다.", "#Person1#는 Jimmy를 운동하러 초대합니다."),
    ("전혀 다른 문장입니다.", "#Person1#은 은행 계좌를 엽니다."),
]
PREDS = [p for p, _ in PAIRS]
REFS = [r for _, r in PAIRS]


def reference_mean_f1(preds: list[str], refs: list[str], tokenizer: object) -> dict[str, float]:
    """Mean per-example F1 straight from rouge-score's own scorer."""
    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    per_example = [scorer.score(r, p) for p, r in zip(preds, refs)]
    return {t: sum(s[t].fmeasure for s in per_example) / len(per_example) for t in ROUGE_TYPES}


# --- tokenizers -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("#Person1#은", ["#person1#", "은"]),
        ("#Person1#은 #PhoneNumber#로 전화했다.", ["#person1#", "은", "#phonenumber#", "로", "전화했다"]),
        ("#Person1##Person2#", ["#person1#", "#person2#"]),
        ("Hello, World! 3시에 만나요...", ["hello", "world", "3시에", "만나요"]),
        ("snake_case·가운뎃점「괄호」", ["snake", "case", "가운뎃점", "괄호"]),
        ("# 해시 #", ["해시"]),
        ("", []),
    ],
)
def test_whitespace_tokenizer(text: str, tokens: list[str]) -> None:
    assert WhitespaceTokenizer().tokenize(text) == tokens


def test_whitespace_tokenizer_equates_composed_and_decomposed_hangul() -> None:
    text = "#Person1#은 한국어를 합니다"
    decomposed = unicodedata.normalize("NFD", text)
    assert decomposed != text
    assert WhitespaceTokenizer().tokenize(decomposed) == WhitespaceTokenizer().tokenize(text)


def test_morpheme_tokenizer_keeps_masks_whole_and_splits_particles() -> None:
    pytest.importorskip("kiwipiepy")
    tokens = MorphemeTokenizer().tokenize("#Person1#은 #Person2#에게 Jimmy의 #PhoneNumber#를 알려줬다.")
    assert tokens[:4] == ["#person1#", "은", "#person2#", "에게"]
    assert "#phonenumber#" in tokens and "를" in tokens and "jimmy" in tokens
    # Kiwi alone would produce `#Person1` and `#은`; no such fragments and no punctuation survive.
    assert all(t.count("#") in (0, 2) for t in tokens)
    assert "." not in tokens
    assert MorphemeTokenizer().tokenize("...!?") == []


def test_morpheme_tokenizer_missing_kiwipiepy_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "kiwipiepy" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install kiwipiepy.*dsum\[morpheme\]"):
        KoreanRouge(tokenizer="morpheme")


def test_get_tokenizer_rejects_unknown_names_and_objects() -> None:
    with pytest.raises(ValueError, match=r"'mecab'.*whitespace, morpheme"):
        get_tokenizer("mecab")
    with pytest.raises(TypeError, match="tokenize"):
        get_tokenizer(object())  # type: ignore[arg-type]


# --- agreement with rouge-score and the Hangul pitfall -----------------------------------------------

def test_matches_rouge_score_with_the_same_tokenizer() -> None:
    expected = reference_mean_f1(PREDS, REFS, WhitespaceTokenizer())
    one_shot = rouge_scores(PREDS, REFS)
    metric = KoreanRouge()
    metric.update(PREDS[:2], REFS[:2], torch.tensor([0, 1]))
    metric.update(PREDS[2:], REFS[2:], torch.tensor([2, 3, 4]))
    streamed = metric.compute()
    for result in (one_shot, streamed):
        for t in ROUGE_TYPES:
            assert result[t] == pytest.approx(expected[t], abs=1e-6)
        assert result["rouge_mean"] == pytest.approx(100 * sum(expected.values()) / 3, abs=1e-4)
        assert result["count"] == len(PAIRS)


def test_morpheme_scores_match_rouge_score_with_the_same_tokenizer() -> None:
    pytest.importorskip("kiwipiepy")
    expected = reference_mean_f1(PREDS, REFS, MorphemeTokenizer())
    result = rouge_scores(PREDS, REFS, tokenizer="morpheme")
    for t in ROUGE_TYPES:
        assert result[t] == pytest.approx(expected[t], abs=1e-6)
    # Morphemes match `가기로` in `가기로 했습니다` / `결정했습니다` better than whole words do.
    assert result["rouge1"] > rouge_scores(PREDS, REFS)["rouge1"]


def test_default_rouge_score_tokenizer_deletes_hangul() -> None:
    pred, ref = "오늘 날씨가 정말 좋네요", "오늘은 날씨가 좋네요"
    default = RougeScorer(list(ROUGE_TYPES)).score(ref, pred)
    assert all(default[t].fmeasure == 0.0 for t in ROUGE_TYPES)
    ours = rouge_scores([pred], [ref])
    assert ours["rouge1"] == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))  # 날씨가, 좋네요
    # With masks, the default tokenizer scores only the `person1` fragments: plausible, and wrong.
    masked = RougeScorer(["rouge1"]).score("#Person1#은 완전히 다른 이야기를 합니다", "#Person1#은 집에 갑니다")
    assert masked["rouge1"].fmeasure == 1.0


# --- multiple references ----------------------------------------------------------------------------

def test_multi_reference_takes_the_best_f1_per_rouge_type() -> None:
    pred = "가 나 다 라"
    refs = ["라 다 나 가", "가 나 마 바"]  # all unigrams but no bigram / two unigrams and one bigram
    result = rouge_scores([pred], [refs])
    assert result["rouge1"] == pytest.approx(1.0)  # from the first reference
    assert result["rouge2"] == pytest.approx(1 / 3)  # from the second
    assert result["rougeL"] == pytest.approx(0.5)  # LCS `가 나` with the second
    assert rouge_scores([pred], [[refs[1]]]) == rouge_scores([pred], [refs[1]])


# --- the Metric: de-duplication, empty state, validation ----------------------------------------------

def test_duplicate_indices_count_once_keeping_the_first() -> None:
    metric = KoreanRouge()
    metric.update(["오늘 날씨가 좋다", "전혀 다른 말"], ["오늘 날씨가 좋다", "내일 비가 온다"], [0, 1])
    metric.update(["완전히 틀린 요약"], ["오늘 날씨가 좋다"], [0])  # a sampler's padded repeat of example 0
    result = metric.compute()
    assert result["count"] == 2
    assert result["rouge1"] == pytest.approx(0.5)


def test_without_indices_nothing_is_deduplicated() -> None:
    metric = KoreanRouge()
    metric.update(["오늘 날씨가 좋다"], ["오늘 날씨가 좋다"])
    metric.update(["다른 말"], ["오늘 날씨가 좋다"])
    assert metric.compute()["count"] == 2


def test_no_examples_gives_zeros() -> None:
    metric = KoreanRouge()
    with pytest.warns(UserWarning, match="before the ``update``"):
        result = metric.compute()
    assert result == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rouge_mean": 0.0, "count": 0}
    assert rouge_scores([], [])["count"] == 0


def test_reset_clears_examples() -> None:
    metric = KoreanRouge()
    metric.update(PREDS, REFS, list(range(len(PREDS))))
    metric.reset()
    metric.update(PREDS[:1], REFS[:1], [0])
    assert metric.compute()["count"] == 1


@pytest.mark.parametrize(
    ("preds", "targets", "indices", "error", "message"),
    [
        (["a", "b"], ["a"], None, ValueError, "2 predictions but 1 references"),
        ("a single string", ["a"], None, TypeError, "not a single string"),
        (["a"], [[]], None, ValueError, "Example 0"),
        (["a"], ["a"], [0, 1], ValueError, "2 indices for 1 predictions"),
        (["a"], ["a"], [-3], ValueError, ">= 0"),
    ],
)
def test_update_rejects_misaligned_inputs(preds, targets, indices, error, message) -> None:
    with pytest.raises(error, match=message):
        KoreanRouge().update(preds, targets, indices)


@pytest.mark.parametrize("metric_class", [KoreanRouge, PooledMean])
def test_states_stay_float64_when_the_metric_is_moved(metric_class) -> None:
    # Lightning moves metrics with the module; torchmetrics would reset their dtype to float32.
    metric = metric_class().to("cpu")
    assert metric.dtype == torch.float64
    metric.float()
    assert metric.dtype == torch.float64


def test_metric_pickles() -> None:
    metric = KoreanRouge()
    metric.update(PREDS, REFS, list(range(len(PREDS))))
    clone = pickle.loads(pickle.dumps(metric))
    assert clone.compute() == metric.compute()


# --- PooledMean: loss per token and length per example, each example once --------------------------

# Per example: summed token losses and token counts (example 4 has one long summary).
TOTALS = [2.0, 3.0, 1.0, 4.0, 30.0]
COUNTS = [2, 1, 1, 4, 10]


def test_pooled_mean_is_a_ratio_of_sums_with_duplicates_counted_once() -> None:
    metric = PooledMean()
    metric.update(torch.tensor(TOTALS[:3]), [0, 1, 2], torch.tensor(COUNTS[:3]))
    metric.update(torch.tensor(TOTALS[3:]), torch.tensor([3, 4]), torch.tensor(COUNTS[3:]))
    metric.update(torch.tensor([100.0]), [0], torch.tensor([1]))  # a padded repeat of example 0: ignored
    assert metric.compute() == pytest.approx(sum(TOTALS) / sum(COUNTS))  # 40 / 18, not the mean of ratios


def test_pooled_mean_without_counts_is_the_mean_per_example() -> None:
    metric = PooledMean()
    metric.update(torch.tensor([10, 20]), [5, 6])
    metric.update(torch.tensor([99]), [5])
    assert metric.compute() == pytest.approx(15.0)


def test_pooled_mean_empty_is_nan_and_reset_clears() -> None:
    metric = PooledMean()
    metric.update(torch.tensor([1.0]), [0])
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(metric.compute())


@pytest.mark.parametrize(
    ("totals", "indices", "counts", "message"),
    [
        ([1.0, 2.0], [0], None, "got 1 indices, 2 totals and 2 counts"),
        ([1.0], [0], [1, 2], "got 1 indices, 1 totals and 2 counts"),
        ([1.0], [-1], None, ">= 0; got -1"),
    ],
)
def test_pooled_mean_rejects_misaligned_inputs(totals, indices, counts, message) -> None:
    with pytest.raises(ValueError, match=message):
        PooledMean().update(torch.tensor(totals), indices, None if counts is None else torch.tensor(counts))


# --- DDP: shards with a padded duplicate --------------------------------------------------------------

# Dataset indices per rank, as a DistributedSampler pads 5 examples to 2 x 3: example 0 appears twice.
SHARDS = [[0, 2, 4], [1, 3, 0]]


def _shard_update(metric: KoreanRouge, rank: int) -> None:
    index = SHARDS[rank]
    metric.update([PREDS[i] for i in index], [REFS[i] for i in index], torch.tensor(index))


def _pooled_shard_update(metric: PooledMean, rank: int) -> None:
    index = SHARDS[rank]
    metric.update(torch.tensor([TOTALS[i] for i in index]), torch.tensor(index), torch.tensor([COUNTS[i] for i in index]))


def test_merge_state_equals_single_instance() -> None:
    single = KoreanRouge()
    single.update(PREDS, REFS, torch.arange(len(PREDS)))
    rank0, rank1 = KoreanRouge(), KoreanRouge()
    _shard_update(rank0, 0)
    _shard_update(rank1, 1)
    rank0.merge_state(rank1)
    assert rank0.compute() == pytest.approx(single.compute(), abs=1e-12)

    pooled0, pooled1 = PooledMean(), PooledMean()
    _pooled_shard_update(pooled0, 0)
    _pooled_shard_update(pooled1, 1)
    pooled0.merge_state(pooled1)
    assert pooled0.compute() == pytest.approx(sum(TOTALS) / sum(COUNTS), abs=1e-12)


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        padded = KoreanRouge()
        _shard_update(padded, rank)
        # A rank that saw nothing still has to take part in the gather, after Lightning moved the metric.
        lopsided = KoreanRouge().to("cpu")
        if rank == 0:
            lopsided.update(PREDS, REFS, torch.arange(len(PREDS)))
        pooled = PooledMean()
        _pooled_shard_update(pooled, rank)
        pooled_lopsided = PooledMean().to("cpu")
        if rank == 1:
            pooled_lopsided.update(torch.tensor(TOTALS), torch.arange(len(TOTALS)), torch.tensor(COUNTS))
        results = {"padded": padded.compute(), "lopsided": lopsided.compute(),
                   "pooled": pooled.compute(), "pooled_lopsided": pooled_lopsided.compute()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_match_single_instance(tmp_path: Path) -> None:
    single = KoreanRouge()
    single.update(PREDS, REFS, torch.arange(len(PREDS)))
    expected = single.compute()

    context = mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    for _ in range(60):  # generous on 2 shared cores; a hang fails instead of blocking the suite
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("DDP workers did not finish within 60 s")

    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert results["padded"] == pytest.approx(expected, abs=1e-12)
        assert results["lopsided"] == pytest.approx(expected, abs=1e-12)
        assert results["pooled"] == results["pooled_lopsided"] == pytest.approx(sum(TOTALS) / sum(COUNTS), abs=1e-12)
