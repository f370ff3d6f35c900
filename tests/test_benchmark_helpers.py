"""The benchmarks' own helpers: the throughput benchmark's padding-free bound and train-sized start-up CSV, the
LoRA benchmark's TRL data, one GPU per benchmark process, and the GPU acceptance command without a GPU.

The benchmarks themselves are never run by the test suite (they take minutes); these helpers decide which
figures they report and how their processes start, so they are checked here on synthetic inputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsum.data.io import read_dialogue_csv

BENCHMARKS = Path(__file__).parent / "benchmarks"
BENCH_PATH = BENCHMARKS / "bench_throughput.py"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    yield _load(BENCH_PATH)
    sys.modules.pop("bench_throughput", None)


@pytest.fixture(scope="module")
def lora_bench():
    yield _load(BENCHMARKS / "bench_lora.py")
    sys.modules.pop("bench_lora", None)


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


# ================================================================================ bench_lora's TRL row
def test_trl_row_data_is_prepared_from_the_sample(lora_bench, tiny_llm_random, tmp_path) -> None:
    """The TRL row's data: `fit` needs a validation file (it crashed with "`fit` needs data.val_file" before TRL
    ran), and SFTTrainer takes pre-tokenized examples as input_ids + completion_mask."""
    from dsum.data import DialogueDataModule

    data, tokenizer = lora_bench.trl_dataset(tiny_llm_random, tmp_path)

    assert data.column_names == ["input_ids", "completion_mask"]
    assert len(data) == len(read_dialogue_csv(lora_bench.CSV, labelled=True).dialogues)
    dm = DialogueDataModule(str(tiny_llm_random), train_file=str(lora_bench.CSV), decoder_only=True,
                            prompt_template="chat", encoder_max_len=512, decoder_max_len=64,
                            cache_dir=str(tmp_path / "cache"))
    dm.setup()
    features = dm.splits["train"].features
    for row, prompt, summary in zip(data, features["input_ids"], features["labels"]):
        assert row["input_ids"] == prompt + summary  # the dsum rows' examples, token for token
        assert row["completion_mask"] == [0] * len(prompt) + [1] * len(summary)
    assert features["labels"][0][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "#Person1#" in tokenizer.get_vocab()  # the data module's tokenizer, masks added


# ================================================================================ one GPU per benchmark process
@pytest.mark.parametrize(("visible", "expected"), [
    (None, "0"), ("0,1,2,3", "0"), ("2,3", "2"), ("GPU-8f2c,GPU-11ab", "GPU-8f2c"), ("", ""),
])
@pytest.mark.parametrize("module", ["bench", "lora_bench"])
def test_child_environment_names_one_gpu(module, visible, expected, request) -> None:
    one_gpu_env = request.getfixturevalue(module).one_gpu_env
    env = {"PATH": "/bin"} if visible is None else {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": visible}
    assert one_gpu_env(env) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": expected}
    assert env.get("CUDA_VISIBLE_DEVICES") == visible  # the parent's own environment is left alone


class FakeRun:
    """Stands in for ``subprocess.run``: records each child's environment and writes what the child would."""

    def __init__(self) -> None:
        self.envs: list[dict[str, str]] = []

    def __call__(self, cmd, env=None, **kwargs) -> subprocess.CompletedProcess:
        self.envs.append(dict(env))
        stdout = ""
        if "--result-file" in cmd:  # a bench_throughput variant
            Path(cmd[cmd.index("--result-file") + 1]).write_text(json.dumps({"samples_per_s": 1.0, "steps": 1}))
        elif "--child" in cmd:  # a bench_lora variant
            stdout = "RESULT " + json.dumps({"tokens_per_s": 1.0})
        else:  # main.py fit of the start-up part
            run_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--trainer.default_root_dir="))
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            Path(run_dir, "run.json").write_text(json.dumps({"history": [{"startup_seconds": 1.0}]}))
        return subprocess.CompletedProcess(cmd, 0, stdout, "")


@pytest.mark.parametrize("visible", [None, "0,1,2,3"])
def test_every_benchmark_child_process_sees_one_gpu(bench, lora_bench, visible, monkeypatch, tmp_path) -> None:
    """On a 4-GPU host the HF Trainer rows would wrap the model in nn.DataParallel across all 4 GPUs."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # the host: four GPUs
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = FakeRun()
    monkeypatch.setattr(subprocess, "run", fake)
    opts = argparse.Namespace(csv="train.csv", batch_size=2, epochs=1, warmup_steps=0, max_steps=0,
                              cache_dir=str(tmp_path), threads=0, cpu=False, profile=None, verbose=False,
                              startup_rows=0)
    bench.run_child(opts, "b/hf_dynamic", "model", "", [])
    bench.startup_overhead(opts, "model", cuda=True)
    lora_opts = argparse.Namespace(steps=2, batch_size=2, warmup=0)
    assert "error" not in lora_bench.run_variant("gpu/trl_qlora", Path("model"), tmp_path, lora_opts)

    assert len(fake.envs) == 4  # one variant, the cold and warm start-up runs, one LoRA variant
    assert [env["CUDA_VISIBLE_DEVICES"] for env in fake.envs] == ["0"] * 4


# ================================================================================ gpu_acceptance.py
def test_gpu_acceptance_without_cuda_says_so_and_fails_fast() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, also on a GPU machine
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_acceptance.py")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_acceptance: no CUDA GPU")
    assert time.perf_counter() - started < 60


@pytest.fixture()
def acceptance():
    yield _load(BENCHMARKS / "gpu_acceptance.py")
    sys.modules.pop("gpu_acceptance", None)


def test_gpu_acceptance_prints_one_table_and_stops_a_part_at_its_limit(acceptance, monkeypatch, capsys,
                                                                        tmp_path) -> None:
    """The whole command on fake parts: a benchmark's figures and skips become rows, a part past its time limit
    is stopped and reported, and the exit status says that something failed."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    rows = [{"variant": "gpu/qlora", "tokens_per_s": 1234.5, "median_step_s": 0.25, "peak_gpu_mb": 2048.0},
            {"variant": "gpu/full", "error": "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory"},
            {"variant": "gpu/trl_qlora", "error": "trl is not installed (pip install trl)"}]
    lora = ("-c", f"import json; json.dump({rows!r}, open('{{out}}/lora.json', 'w')); "
                  "print('dsum/trl tokens/s = 1.50x')")
    monkeypatch.setattr(acceptance, "PARTS", {
        "lora": acceptance.Part(lora, 60, acceptance.lora_rows),
        "slow": acceptance.Part(("-c", "import time; time.sleep(60)"), 1, lambda out, log: []),
    })
    started = time.perf_counter()
    assert acceptance.main(["--parts", "lora,slow", "--out", str(tmp_path)]) == 1
    assert time.perf_counter() - started < 30
    table = capsys.readouterr().out
    assert "Fake GPU x1" in table
    assert "| lora | gpu/qlora | passed | 1,234.5 tokens/s, 0.250 s/step, 2,048 MB peak GPU |" in table
    assert "| lora | gpu/full | failed | torch.OutOfMemoryError: CUDA out of memory |" in table
    assert "| lora | gpu/trl_qlora | skipped | trl is not installed (pip install trl) |" in table
    assert "| lora | dsum/trl tokens/s | passed | 1.50x |" in table
    assert "| slow | time limit | timed out | stopped after 1s" in table
    assert table.strip().endswith("3 of 5 checks passed or skipped; 2 failed or timed out")


def test_gpu_acceptance_reads_the_throughput_report(acceptance, tmp_path) -> None:
    report = {"variants": {"a/token_budget": {"samples_per_s": 50.0, "peak_gpu_mb": 900.0}},
              "generation": {"g/dsum_validate": {"samples_per_s": 9.0}},
              "large": {"a/token_budget": {"samples_per_s": 20.0}, "b/hf_dynamic": {"samples_per_s": 10.0}},
              "startup": {"cold": {"startup_seconds": 8.0}, "warm": {"startup_seconds": 5.5}},
              "ratios": {"a/b": 2.0}, "large_ratio_a_b": 2.0, "large_ratio_a_b2": 1.25}
    (tmp_path / "throughput.json").write_text(json.dumps(report))
    rows = acceptance.throughput_rows(tmp_path, "")
    assert [(r.check, r.figures) for r in rows] == [
        ("tiny BART a/token_budget", "50.0 samples/s, 900 MB peak GPU"),
        ("generation g/dsum_validate", "9.0 samples/s"),
        ("KoBART-sized a/token_budget", "20.0 samples/s"),
        ("KoBART-sized b/hf_dynamic", "10.0 samples/s"),
        ("main.py fit start-up", "cold 8.0s, warm 5.5s"),
        ("ratios", "a/b=2.00x kobart_sized a/b=2.00x kobart_sized a/b2=1.25x"),
    ]
