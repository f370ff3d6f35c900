"""LoRA fine-tuning of the tiny (briefly pre-trained) chat LLM learns the task on the sample: on dev it beats the
best single constant summary, and its summaries depend on the dialogue."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dsum.cli import DsumCLI
from dsum.data.io import read_dialogue_csv
from dsum.data.text import TextNormalization
from dsum.metrics import rouge_scores
from tests.conftest import SAMPLE
from tests.test_llm_lora import llm_args


def best_constant_score(candidates: list[str], references: list[list[str]]) -> tuple[float, str]:
    """The best ROUGE mean on dev of one summary given for every dialogue, over every train summary."""
    return max((rouge_scores([c] * len(references), references, "whitespace")["rouge_mean"], c) for c in candidates)


@pytest.mark.slow
def test_lora_learns_on_the_sample(tiny_llm, tmp_path) -> None:
    run_dir = tmp_path / "learn"
    # configs/quickstart-llm.yaml as shipped (8 epochs, LoRA r 16, lr 1e-2, batch 8).
    DsumCLI(args=["fit", *llm_args(tiny_llm, run_dir, "--data.batch_size=8", "--data.eval_batch_size=32")])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"

    submission = tmp_path / "dev_predictions.csv"
    DsumCLI(args=["predict", *llm_args(run_dir / "best_model", tmp_path / "predict", "--data.eval_batch_size=32"),
                  f"--data.predict_file={SAMPLE / 'dev.csv'}", f"--submission.path={submission}"])
    predictions = pd.read_csv(submission, keep_default_na=False, index_col=0)["summary"].tolist()

    normalize = TextNormalization()
    dev = read_dialogue_csv(str(SAMPLE / "dev.csv"), labelled=True)
    references = [[normalize(r) for r in refs] for refs in dev.references]
    train = read_dialogue_csv(str(SAMPLE / "train.csv"), labelled=True)
    constant, summary = best_constant_score([normalize(refs[0]) for refs in train.references], references)
    score = rouge_scores(predictions, references, "whitespace")["rouge_mean"]
    assert score > constant, (score, constant, summary)
    assert len(set(predictions)) >= len(predictions) / 3, predictions[:10]  # summaries follow the dialogue
