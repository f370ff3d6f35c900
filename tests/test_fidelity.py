"""Mask fidelity and length ratio, on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from dsum.eval.fidelity import FidelityMetrics, example_counts, fidelity_scores


def test_masks_copied_right_wrong_and_missing() -> None:
    scores = fidelity_scores(
        ["#Person1#이 #Person2#에게 #PhoneNumber#를 준다.", "#Person1#이 #Person1#에게 말한다."],
        ["#Person1#은 #Person2#에게 #PhoneNumber#를 알려준다.", "#Person2#가 #Person1#에게 말한다."])
    # Predicted 3 + 2 masks; matched 3 + 1 (the second #Person1# is one too many); expected 3 + 2.
    assert scores["mask_precision"] == pytest.approx(4 / 5)
    assert scores["mask_recall"] == pytest.approx(4 / 5)
    assert scores["mask_f1"] == pytest.approx(4 / 5)


def test_a_summary_without_masks_has_no_recall_and_an_invented_mask_costs_precision() -> None:
    none = fidelity_scores(["그가 전화번호를 준다."], ["#Person1#이 #PhoneNumber#를 준다."])
    assert (none["mask_precision"], none["mask_recall"], none["mask_f1"]) == (1.0, 0.0, 0.0)
    invented = fidelity_scores(["#Person1#이 #Email#을 준다."], ["#Person1#이 준다."])
    assert (invented["mask_precision"], invented["mask_recall"]) == (0.5, 1.0)
    assert invented["mask_f1"] == pytest.approx(2 / 3)


def test_nothing_expected_and_nothing_written_is_perfect() -> None:
    scores = fidelity_scores(["안녕"], ["안녕하세요"])
    assert (scores["mask_precision"], scores["mask_recall"], scores["mask_f1"]) == (1.0, 1.0, 1.0)


def test_length_ratio_counts_characters_without_spaces_pooled_over_the_corpus() -> None:
    scores = fidelity_scores(["가나 다", "가"], ["가나다라 마바", "가나"])  # (3 + 1) / (6 + 2)
    assert scores["length_ratio"] == pytest.approx(0.5)


def test_several_references_count_as_their_mean() -> None:
    counts = example_counts("#Person1# 와 #Person2#", ["#Person1# 가", "#Person1# 와 #Person2# 와 #Person3#"])
    assert counts.tolist()[:3] == [1.5, 2.0, 2.0]  # matched (1 + 2) / 2, predicted 2, expected (1 + 3) / 2


def test_the_metric_counts_each_dataset_index_once_and_equals_the_function() -> None:
    preds = ["#Person1#이 간다.", "#Person2#가 #Person1#을 본다.", "아무도 없다."]
    refs = [["#Person1#이 간다."], ["#Person2#가 본다."], ["#Person1#이 없다."]]
    metric = FidelityMetrics()
    metric.update(preds[:2], refs[:2], torch.tensor([0, 1]))
    metric.update(preds[1:], refs[1:], torch.tensor([1, 2]))  # example 1 again: a DDP padding repeat
    assert metric.compute() == pytest.approx(fidelity_scores(preds, refs))
    metric.reset()
    assert all(v != v for v in metric.compute().values())  # NaN without examples


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        fidelity_scores(["a", "b"], ["a"])


def test_sweep_summaries_show_the_fidelity_of_each_trials_best_validation(tmp_path) -> None:
    import json

    from dsum.sweep.summary import collect_trials

    history = [{"epoch": 0, "step": 5, "val/rouge_mean": 30.0, "val/mask_f1": 0.5, "val/mask_precision": 0.6,
                "val/mask_recall": 0.4, "val/length_ratio": 1.3},
               {"epoch": 1, "step": 10, "val/rouge_mean": 35.0, "val/mask_f1": 0.8, "val/mask_precision": 0.9,
                "val/mask_recall": 0.7, "val/length_ratio": 1.1},
               {"epoch": 2, "step": 15, "val/rouge_mean": 33.0, "val/mask_f1": 0.9, "val/mask_precision": 0.9,
                "val/mask_recall": 0.9, "val/length_ratio": 1.0}]
    fit = tmp_path / "runs" / "fit"
    fit.mkdir(parents=True)
    (fit / "run.json").write_text(json.dumps({"run_id": "fit", "status": "completed", "metrics_history": history}))
    decode = tmp_path / "runs" / "decode"
    decode.mkdir()
    (decode / "validate.json").write_text(json.dumps({
        "run_id": "decode", "status": "completed", "metrics_history": [],
        "final_metrics": {"val/rouge_mean": 31.0, "val/mask_f1": 0.25, "val/mask_precision": 0.5,
                          "val/mask_recall": 1 / 6, "val/length_ratio": 0.9}}))
    rows = {row["run_id"]: row for row in collect_trials(tmp_path)}
    assert rows["fit"]["fidelity"] == {"mask_precision": 0.9, "mask_recall": 0.7, "mask_f1": 0.8,
                                       "length_ratio": 1.1}  # the best epoch's, not the last or first
    assert rows["decode"]["fidelity"]["mask_f1"] == 0.25
