"""The throughput benchmark's own arithmetic: the padding-free bound and the train-sized start-up CSV.

The benchmark itself is never run by the test suite (it takes minutes); these helpers decide which
figures it reports, so they are checked here on synthetic inputs.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from dsum.data.io import read_dialogue_csv

BENCH_PATH = Path(__file__).parent / "benchmarks" / "bench_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _steps(batches: list[list[int]], src: np.ndarray, tgt: np.ndarray, coef: tuple[float, ...]) -> dict:
    """A fake variant result whose step times follow the benchmark's model exactly."""
    n = np.array([len(b) for b in batches], float)
    enc = np.array([len(b) * src[b].max() for b in batches], float)
    dec = np.array([len(b) * tgt[b].max() for b in batches], float)
    seconds = coef[0] + coef[1] * enc + coef[2] * dec + coef[3] * enc * enc / n
    return {"step_examples": n.tolist(), "step_encoder_positions": enc.tolist(),
            "step_decoder_positions": dec.tolist(), "step_seconds": seconds.tolist(),
            "warmup_steps_excluded": 1, "steps": len(batches)}


def test_padding_free_bound_recovers_the_step_model_and_the_ideal_epoch(bench):
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(20, 400, 96), rng.integers(5, 80, 96)
    coef = (0.01, 2e-5, 5e-5, 1e-8)
    order = np.argsort(src)
    sorted_batches = [order[i : i + 8].tolist() for i in range(0, 96, 8)]
    shuffled = rng.permutation(96)
    random_batches = [shuffled[i : i + 8].tolist() for i in range(0, 96, 8)]
    results = {"a/sorted": _steps(sorted_batches, src, tgt, coef), "b/random": _steps(random_batches, src, tgt, coef)}

    bound = bench.padding_free_bound(results, src.tolist(), tgt.tolist())

    assert bound["r2"] == pytest.approx(1.0)
    assert list(bound["coefficients"].values()) == pytest.approx(coef, rel=1e-4)
    ideal = 12 * coef[0] + coef[1] * src.sum() + coef[2] * tgt.sum() + coef[3] * (src.astype(float) ** 2).sum()
    assert bound["padding_free_epoch_s"] == pytest.approx(ideal, rel=1e-6)
    ratios = bound["bound_ratios"]
    assert 1.0 < ratios["a/sorted"] < ratios["b/random"]  # sorted batches pad less, random ones more
    assert ratios["b/random"] == pytest.approx(sum(results["b/random"]["step_seconds"]) / ideal, rel=1e-6)


def test_padding_free_bound_needs_enough_steps(bench):
    src, tgt = np.array([10, 20, 30]), np.array([5, 5, 5])
    results = {"a/x": _steps([[0, 1], [2]], src, tgt, (0.1, 1e-4, 1e-4, 0.0))}
    assert bench.padding_free_bound(results, src.tolist(), tgt.tolist()) is None


def test_train_sized_csv_repeats_rows_with_unique_ids(bench, tmp_path, sample_dir):
    source = sample_dir / "dev.csv"
    original = read_dialogue_csv(source, labelled=True)
    rows = 2 * len(original) + 7

    path = bench.train_sized_csv(str(source), rows, tmp_path / "big.csv")

    copied = read_dialogue_csv(path, labelled=True)  # dsum's reader refuses duplicate fnames
    assert len(copied) == rows
    assert len(set(copied.fnames)) == rows
    assert copied.dialogues[: len(original)] == original.dialogues
    assert copied.dialogues[len(original) : 2 * len(original)] == original.dialogues
    assert copied.references[-7:] == original.references[:7]
    assert copied.fnames[len(original)] == f"{original.fnames[0]}#1"


def test_switch_rows_are_added_where_they_apply(bench):
    train, gen = bench.expand_rows("a/length_grouped,a/token_budget,b2/hf_group_by_length",
                                   "g/dsum_validate,g/hf_sorted", "compile,dropout=0")
    assert train == ["a/length_grouped", "a/token_budget", "b2/hf_group_by_length",
                     "a/token_budget+compile", "a/token_budget+dropout=0"]
    assert gen == ["g/dsum_validate", "g/hf_sorted", "g/dsum_validate+compile"]  # dropout: training only
    assert bench.variant_switches("a/token_budget+compile+attn=eager") == {"compile": "", "attn": "eager"}
    assert bench.model_switches({"compile": "", "attn": "eager"}) == {"compile": True, "attn_implementation": "eager"}


@pytest.mark.parametrize(("variants", "gen", "switches", "message"), [
    ("a/nope", "", "", "unknown row(s) a/nope"),
    ("b/hf_dynamic", "", "", "need at least one a/ variant"),
    ("a/token_budget", "", "fast", "--switches: unknown fast"),
    ("a/token_budget,b/hf_dynamic+compile", "", "", "switches apply to dsum rows only"),
    ("a/token_budget", "g/dsum_validate+log_every=1", "", "'log_every' does not apply to g/ rows"),
])
def test_bad_rows_and_switches_are_named(bench, variants, gen, switches, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bench.expand_rows(variants, gen, switches)


def test_set_dropout_reaches_modules_and_float_attributes(bench):
    import torch

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = 0.1
            self.activation_dropout = 0.2
            self.drop = torch.nn.Dropout(0.3)

    model = torch.nn.Sequential(Layer(), Layer())
    assert bench.set_dropout(model, 0.0) == 6
    assert all(layer.dropout == 0.0 and layer.activation_dropout == 0.0 and layer.drop.p == 0.0 for layer in model)


def test_ratios_name_the_default_and_the_best_mode(bench):
    def row(speed):
        return {"samples_per_s": speed}

    results = {"a/length_grouped": row(40.0), "a/token_budget": row(50.0), "a/token_budget+compile": row(60.0),
               "b/hf_dynamic": row(25.0), "b2/hf_group_by_length": row(40.0), "c/hf_full_pad": row(12.5)}
    generation = {"g/dsum_validate": row(9.0), "g/hf_sorted": row(6.0), "g/hf_file_order": row(3.0)}
    ratios = bench.all_ratios(results, generation)
    assert ratios == pytest.approx({"a/b": 2.0, "a/b2": 1.25, "a/c": 4.0, "best/b": 2.4, "best/b2": 1.5,
                                    "best/c": 4.8, "gen/sorted": 1.5, "gen/file_order": 3.0})
    results["a/token_budget+compile"] = row(45.0)  # slower with the switch: only the default mode is reported
    assert set(bench.all_ratios(results, {})) == {"a/b", "a/b2", "a/c"}
