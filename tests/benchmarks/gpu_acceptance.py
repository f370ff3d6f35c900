"""GPU acceptance: every GPU test and every GPU benchmark part in one command, with one table of results.

One command (see ``tests/benchmarks/README.md``, "GPU acceptance")::

    python tests/benchmarks/gpu_acceptance.py [--parts pytest,lora,throughput] [--out DIR]

Each part runs as a subprocess with its own time limit (:data:`PARTS`, 11.5 minutes together, so the command ends
within 12 minutes on one GPU); a part that runs over is stopped, its whole process group, and reported as timed out:

- ``pytest``: ``tests/test_gpu.py``. QLoRA nf4 on a ~100M Llama (train, export, reload, generate), a KoBART-sized
  BART in 16-mixed and bf16-mixed with clipping and the divergence guard, T5 in bf16 with Adafactor, and NCCL DDP
  against one GPU when two GPUs are visible. One row per test; a skip shows its reason.
- ``lora``: ``bench_lora.py --gpu on --cpu off``: ``gpu/qlora``, ``gpu/lora_bf16``, ``gpu/full`` and
  ``gpu/trl_qlora`` on a random ~1.1B Llama (tokens/s, peak GPU memory), then ``dsum/trl``.
- ``throughput``: ``bench_throughput.py`` on the GPU: the tiny BART's dsum, HF and HF-grouped rows, the generation
  rows, the ``main.py fit`` start-up (cold and warm) and the KoBART-sized rows (``--large on``), 40 steps each.

The benchmarks pin each of their processes to one GPU. Without a CUDA GPU the command says so and exits 2 at once;
otherwise it exits 1 when a check failed or timed out and 0 when every check passed (skips allowed). Logs and
JSON files go to ``--out`` (default: a new temporary directory, printed with the table).

This file is not collected by pytest (its name does not match ``test_*.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHILD_ENV = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
FAILED = ("failed", "timed out")


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    part: str
    check: str
    result: str  # passed, failed, skipped or timed out
    figures: str = ""


@dataclass(frozen=True)
class Part:
    """One subprocess of the acceptance run: its arguments after the Python interpreter (``{out}`` is the output
    directory), its time limit, and how its results are read (from the output directory and its log)."""

    argv: tuple[str, ...]
    timeout_s: int
    rows: Callable[[Path, str], list[Row]]


# ============================================================================ reading results
def pytest_rows(out: Path, log: str) -> list[Row]:
    """One row per test of pytest's JUnit XML: passed, failed (first line of the message) or skipped (reason)."""
    path = out / "pytest.xml"
    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        failure = next((case.find(tag) for tag in ("failure", "error") if case.find(tag) is not None), None)
        skipped = case.find("skipped")
        seconds = f"{float(case.get('time') or 0):.1f}s"
        if failure is not None:
            message = (failure.get("message") or failure.text or "").strip().splitlines()
            first = message[0][:120] if message else ""
            rows.append(Row("pytest", case.get("name", "?"), "failed", f"{seconds}; {first}"))
        elif skipped is not None:
            rows.append(Row("pytest", case.get("name", "?"), "skipped", (skipped.get("message") or "")[:160]))
        else:
            rows.append(Row("pytest", case.get("name", "?"), "passed", seconds))
    return rows


def _number(value: Any, unit: str, digits: int = 1) -> str:
    return f"{value:,.{digits}f} {unit}" if isinstance(value, (int, float)) else ""


def lora_rows(out: Path, log: str) -> list[Row]:
    """One row per ``bench_lora.py`` variant (tokens/s, median step, peak GPU memory), then ``dsum/trl``."""
    path = out / "lora.json"
    if not path.is_file():
        return []
    rows = []
    for variant in json.loads(path.read_text()):
        name, error = variant["variant"], variant.get("error")
        if error:
            last = error.strip().splitlines()[-1][:160] if error.strip() else "no output"
            rows.append(Row("lora", name, "skipped" if "is not installed" in last else "failed", last))
            continue
        figures = [_number(variant.get("tokens_per_s"), "tokens/s"), _number(variant.get("median_step_s"), "s/step", 3),
                   _number(variant.get("peak_gpu_mb"), "MB peak GPU", 0)]
        rows.append(Row("lora", name, "passed", ", ".join(f for f in figures if f)))
    ratio = re.search(r"^dsum/trl tokens/s = (\S+)$", log, flags=re.MULTILINE)
    if ratio:
        rows.append(Row("lora", "dsum/trl tokens/s", "passed", ratio.group(1)))
    return rows


def throughput_rows(out: Path, log: str) -> list[Row]:
    """One row per ``bench_throughput.py`` row (samples/s, peak GPU memory), the start-up and the ratios."""
    path = out / "throughput.json"
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    rows = []
    for section, label in (("variants", "tiny BART"), ("generation", "generation"), ("large", "KoBART-sized")):
        for name, result in (report.get(section) or {}).items():
            figures = [_number(result.get("samples_per_s"), "samples/s"),
                       _number(result.get("peak_gpu_mb"), "MB peak GPU", 0)]
            rows.append(Row("throughput", f"{label} {name}", "passed", ", ".join(f for f in figures if f)))
    startup = report.get("startup")
    if startup:
        cold, warm = startup["cold"]["startup_seconds"], startup["warm"]["startup_seconds"]
        rows.append(Row("throughput", "main.py fit start-up", "passed", f"cold {cold:.1f}s, warm {warm:.1f}s"))
    ratios = dict(report.get("ratios", {}))
    ratios.update({"kobart_sized " + k.removeprefix("large_ratio_").replace("_", "/"): v for k, v in report.items()
                   if k.startswith("large_ratio_")})  # large_ratio_a_b2 -> kobart_sized a/b2
    if ratios:
        rows.append(Row("throughput", "ratios", "passed", " ".join(f"{k}={v:.2f}x" for k, v in ratios.items())))
    return rows


PARTS: dict[str, Part] = {
    "pytest": Part(("-m", "pytest", "tests/test_gpu.py", "-m", "", "-q", "-rA", "-p", "no:cacheprovider",
                    "--junitxml={out}/pytest.xml"), 270, pytest_rows),
    "lora": Part((str(HERE / "bench_lora.py"), "--gpu", "on", "--cpu", "off", "--steps", "10", "--warmup", "2",
                  "--out", "{out}/lora.json"), 210, lora_rows),
    "throughput": Part((str(HERE / "bench_throughput.py"),
                        "--variants", "a/token_budget,b/hf_dynamic,b2/hf_group_by_length",
                        "--gen-variants", "g/dsum_validate,g/hf_sorted", "--gen-rows", "64", "--startup-rows", "0",
                        "--large", "on", "--max-steps", "40", "--out", "{out}/throughput.json"), 210, throughput_rows),
}


# ============================================================================ running
def run_part(name: str, part: Part, out: Path) -> list[Row]:
    """Run one part with its time limit (output in ``<out>/<name>.log``) and read its rows; a non-zero exit or
    a timeout adds a failing row."""
    argv = [sys.executable, *(arg.replace("{out}", str(out)) for arg in part.argv)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": path}
    log_path = out / f"{name}.log"
    print(f"-- {name}: {' '.join(argv[1:])} (limit {part.timeout_s}s)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        # A session of its own, so a timeout stops the benchmark's own child processes too.
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=part.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    rows = part.rows(out, text)
    if code is None:
        rows.append(Row(name, "time limit", "timed out", f"stopped after {part.timeout_s}s; log {log_path}"))
    elif code != 0:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "no output")
        if name != "pytest" or not any(r.result == "failed" for r in rows):
            rows.append(Row(name, "exit", "failed", f"exit {code}: {last[:160]}; log {log_path}"))
    elif not rows:
        rows.append(Row(name, "results", "failed", f"no results written; log {log_path}"))
    print(f"   {name}: {seconds:.0f}s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| part | check | result | figures |", "|---|---|---|---|"]
    lines += [f"| {r.part} | {r.check} | {r.result} | {r.figures.replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--out", help="directory for logs and JSON (default: a new temporary directory)")
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        parser.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(PARTS)}")

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_acceptance: no CUDA GPU (torch {torch.__version__}, torch.cuda.is_available() is False): nothing "
              "was run; run it on a machine with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    header = (f"GPU acceptance, {dt.datetime.now().astimezone().isoformat(timespec='minutes')}: "
              f"{torch.cuda.get_device_name(0)} x{gpus}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    out = Path(opts.out) if opts.out else Path(tempfile.mkdtemp(prefix="gpu_acceptance_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [row for name in names for row in run_part(name, PARTS[name], out)]
    failed = [r for r in rows if r.result in FAILED]
    print(f"\n{header}; {time.perf_counter() - started:.0f}s; logs {out}\n")
    print(table(rows))
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed or skipped; {len(failed)} failed or timed out")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
