"""Post-processing of generated summaries: hand-written cases per option, their order, and `decode`."""

from __future__ import annotations

import pytest

from dsum.models import Seq2SeqSummarizer
from dsum.eval.postprocess import (
    PostprocessSettings,
    collapse_repeats,
    cut_unfinished_sentence,
    join_mask_particles,
    sentences,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#Person1# 은 집에 갔다.", "#Person1#은 집에 갔다."),
        ("#Person1#  에게 #Person2# 는", "#Person1#에게 #Person2#는"),
        ("#Person1# 과의 약속", "#Person1#과의 약속"),  # stacked particles
        ("#Person2# 에게서 들었다", "#Person2#에게서 들었다"),
        ("#PhoneNumber# 로 전화", "#PhoneNumber#로 전화"),
        ("#Person1#은 이미 붙어 있다", "#Person1#은 이미 붙어 있다"),
        ("#Person1# 모두 왔다", "#Person1# 모두 왔다"),  # a word, not a particle
        ("#Person1# 이사를 간다", "#Person1# 이사를 간다"),  # starts like a particle, is a word
        ("#Person1# 은, 그리고", "#Person1#은, 그리고"),
        ("#Person1#과 #Person2# 는", "#Person1#과 #Person2#는"),
        ("Person1 은", "Person1 은"),  # not a mask
    ],
)
def test_mask_spacing(text: str, expected: str) -> None:
    assert join_mask_particles(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#Person1#은 집에 갔다. #Person2#는 전화를 했", "#Person1#은 집에 갔다."),
        ("두 사람은 만납니다! 그리고 #Person1#", "두 사람은 만납니다!"),
        ("첫 문장입니다. 둘째 문장입니다. 셋째 문", "첫 문장입니다. 둘째 문장입니다."),
        ('그는 "좋아." 라고 말하고 떠', '그는 "좋아."'),  # a closing quote belongs to the sentence end
        ("#Person1#은 3.5시에 만났다", "#Person1#은 3.5시에 만났다"),  # ends in 다: finished, no period
        ("집에 갔다. #Person1#은 3.5시에 만나기로 했어요", "집에 갔다. #Person1#은 3.5시에 만나기로 했어요"),
        ("#Person1#은 3.5시에 만나", "#Person1#은 3.5시에 만나"),  # no sentence end to cut back to
        ("집에 갔다. 3.5", "집에 갔다."),
        ("모두 끝났습니다.", "모두 끝났습니다."),
        ("", ""),
    ],
)
def test_cut_unfinished(text: str, expected: str) -> None:
    assert cut_unfinished_sentence(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#Person1#은 집에 갔다. #Person2#는 남았다. #Person1#은 집에 갔다.", "#Person1#은 집에 갔다. #Person2#는 남았다."),
        ("#Person1#은 집에 갔다 집에 갔다 집에 갔다.", "#Person1#은 집에 갔다."),
        ("#Person1#은 집에 집에 갔다.", "#Person1#은 집에 갔다."),
        ("#Person1#은 #Person2#에게 #Person2#에게 말합니다.", "#Person1#은 #Person2#에게 말합니다."),
        ("가 나 가 나 다", "가 나 다"),
        ("가 나 다 가 나 다.", "가 나 다."),
        ("#Person1#은 사과와 배와 사과를 샀다.", "#Person1#은 사과와 배와 사과를 샀다."),  # not adjacent: kept
        ("두 사람은 만납니다.", "두 사람은 만납니다."),
    ],
)
def test_collapse_repeats(text: str, expected: str) -> None:
    assert collapse_repeats(text) == expected


def test_sentences_keep_their_punctuation_and_the_unfinished_tail() -> None:
    assert sentences("하나. 둘! 셋? 넷") == ["하나.", "둘!", "셋?", "넷"]
    assert sentences("3.5시에 만났다.") == ["3.5시에 만났다."]


def test_settings_apply_only_enabled_steps_in_order() -> None:
    text = "#Person1# 은 집에 갔다 집에 갔다. #Person2# 는 전화를"
    assert PostprocessSettings(mask_spacing=False)(text) == text
    assert PostprocessSettings()(text) == "#Person1#은 집에 갔다 집에 갔다. #Person2#는 전화를"  # default: spacing only
    assert PostprocessSettings(collapse_repeats=True)(text) == "#Person1#은 집에 갔다. #Person2#는 전화를"
    assert PostprocessSettings(cut_unfinished=True)(text) == "#Person1#은 집에 갔다 집에 갔다."
    everything = PostprocessSettings(mask_spacing=True, collapse_repeats=True, cut_unfinished=True)
    assert everything(text) == "#Person1#은 집에 갔다."
    assert everything.apply([text, "  a \n b "]) == ["#Person1#은 집에 갔다.", "a b"]


def test_decode_applies_the_models_postprocess(tiny_models) -> None:
    text = "#Person1# 은 집에 갔다. #Person2# 는 전화를"
    plain = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]),
                              postprocess=PostprocessSettings(mask_spacing=False))
    ids = plain.tokenizer([text], return_tensors="pt")["input_ids"]
    assert plain.decode(ids) == [text]
    cutting = Seq2SeqSummarizer(pretrained=str(tiny_models["bart"]),
                                postprocess=PostprocessSettings(cut_unfinished=True))
    assert cutting.decode(ids) == ["#Person1#은 집에 갔다."]
    assert cutting.hparams.postprocess == PostprocessSettings(cut_unfinished=True)  # saved with the checkpoint


LONG = 100_000  # characters of degenerate model output: every step must stay linear on it


@pytest.mark.timeout(60)  # a backtracking or quadratic step would run for minutes (signal timeouts stop `re` too)
def test_every_step_is_fast_on_100k_characters_of_degenerate_output() -> None:
    # Mask spacing: a particle repeated without end used to backtrack exponentially (26 repeats took 24 s).
    stuck = "#Person1# " + "이랑" * (LONG // 2)
    assert join_mask_particles(stuck + "집") == stuck + "집"  # a word, not only particles: kept spaced
    assert join_mask_particles(stuck + ".") == stuck.replace(" ", "") + "."
    assert join_mask_particles("#Person1# 은 " * (LONG // 12)) == "#Person1#은 " * (LONG // 12)
    # Repeats: 14,000 distinct words were cubic (4,000 took 16 s); repeats of one word or sentence collapse.
    distinct = " ".join(f"단어{i}" for i in range(LONG // 7))
    assert len(distinct.split()) > 4_000
    assert collapse_repeats(distinct) == distinct
    alternating = " ".join(f"가 나{i}" for i in range(LONG // 9))  # `가` recurs, never as a repeat
    assert collapse_repeats(alternating) == alternating
    assert collapse_repeats("가 " * (LONG // 2)) == "가"
    assert collapse_repeats("집에 갔다. " * (LONG // 7)) == "집에 갔다."
    assert collapse_repeats("#Person1#은 " + "이랑 " * (LONG // 3)) == "#Person1#은 이랑"
    # Unfinished sentences: a run of dots was read once per dot (40,000 characters took 48 s).
    dots = "." * LONG
    assert cut_unfinished_sentence("가" + dots + "x") == "가" + dots + "x"  # no sentence end: unchanged
    assert cut_unfinished_sentence("집에 갔다. " + dots + "x") == "집에 갔다."
    assert cut_unfinished_sentence("집에 갔다" + dots + " 그리고") == "집에 갔다" + dots
    runs = ("x" + "." * 1000 + " ") * (LONG // 1002)
    assert sentences(runs) == runs.split()  # each run of dots ends a sentence
    everything = PostprocessSettings(mask_spacing=True, collapse_repeats=True, cut_unfinished=True)
    assert everything(stuck + "집. " + dots + "x") == stuck + "집."


def test_collapse_keeps_one_copy_of_a_repeat_up_to_the_longest_looked_for() -> None:
    from dsum.eval.postprocess import MAX_REPEAT_WORDS

    phrase = " ".join(f"w{i}" for i in range(MAX_REPEAT_WORDS))
    assert collapse_repeats(f"{phrase} {phrase}.") == f"{phrase}."
    longer = f"{phrase} w{MAX_REPEAT_WORDS}"
    assert collapse_repeats(f"{longer} {longer}") == f"{longer} {longer}"  # beyond the bound: left as it is
