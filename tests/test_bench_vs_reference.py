"""The pure logic of benchmarks/bench_vs_reference.py: arguments, round order, medians and ratios, the JSON report.

Nothing here runs the reference or a model (the benchmark itself is run by hand: see benchmarks/README.md).
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from conftest import REPO_ROOT


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    module = importlib.import_module("bench_vs_reference")
    yield module
    for name in ("bench_vs_reference", "_vs_reference_common"):
        sys.modules.pop(name, None)


def _run(side: str, round_index: int, steps: list[float], peak: float) -> dict:
    parts = {"edit": {"rows_per_step": 1, "tokens_per_row": 12.0, "target_tokens_per_row": 1.0}}
    return {"side": side, "round": round_index, "steps_s": steps, "peak_rss_mib": peak, "parts": parts}


def test_defaults_follow_the_recipe(bench):
    small = bench.parse_args(["--reference_dir", "/tmp/LiME"])
    assert (small.shape, small.rounds, small.warmup, small.steps, small.threads) == ("small", 4, 3, 40, 1)
    assert small.tokenizer_dir.endswith("tokenizers/bert-base-multilingual-cased")
    assert bench.parse_args(["--reference_dir", "x", "--shape", "base"]).steps == 30
    assert bench.parse_args(["--reference_dir", "x", "--shape", "base", "--steps", "5"]).steps == 5


def test_setup_alone_needs_no_reference_and_sets_the_venv(bench):
    args = bench.parse_args(["--setup_reference_venv", "/tmp/ref-venv"])
    assert args.reference_dir is None and args.reference_venv == "/tmp/ref-venv"


@pytest.mark.parametrize(
    "argv", [[], ["--reference_dir", "x", "--warmup", "0"], ["--reference_dir", "x", "--rounds", "0"]]
)
def test_bad_arguments_are_refused(bench, argv, capsys):
    with pytest.raises(SystemExit) as raised:
        bench.parse_args(argv)
    assert raised.value.code == 2


def test_rounds_alternate_and_swap(bench):
    assert bench.round_orders(4) == [("reference", "ours"), ("ours", "reference")] * 2


def test_step_intervals_start_at_the_last_warmup_step(bench):
    common = sys.modules["_vs_reference_common"]
    assert common.step_intervals([1.0, 3.0, 4.0, 7.0], warmup=2) == [1.0, 3.0]
    with pytest.raises(ValueError):
        common.step_intervals([1.0, 2.0], warmup=0)


def test_summary_is_the_median_of_run_medians_and_the_ratios(bench):
    runs = [
        _run("reference", 1, [3.0, 1.0, 2.0], 1000.0),  # median 2
        _run("ours", 1, [0.5, 0.4, 9.0], 800.0),  # median 0.5
        _run("ours", 2, [1.0, 1.0, 1.0], 900.0),  # median 1
        _run("reference", 2, [4.0, 4.0, 4.0], 1000.0),  # median 4
        _run("reference", 3, [6.0, 6.0, 6.0], 1100.0),  # median 6
        _run("ours", 3, [0.0, 2.0, 2.0], 1000.0),  # median 2
    ]
    summary = bench.summarise(runs)
    assert summary["reference"]["run_medians_s"] == [2.0, 4.0, 6.0]
    assert summary["reference"]["median_s"] == 4.0 and summary["ours"]["median_s"] == 1.0
    assert summary["speedup"] == pytest.approx(4.0)
    assert summary["ours"]["median_peak_rss_mib"] == 900.0 and summary["reference"]["max_peak_rss_mib"] == 1100.0
    assert summary["memory_ratio"] == pytest.approx(0.9)
    # means: reference 2, 4, 6 -> 4; ours 3.3, 1, 4/3 -> 4/3 (the slow optimizer-step-like 9.0 counts here)
    assert summary["ours"]["mean_s"] == pytest.approx(4 / 3) and summary["speedup_of_means"] == pytest.approx(3.0)
    text = bench.format_report("small", 13_224_966, runs, summary)
    assert "4.00x of medians, 3.00x of means" in text and "0.90x" in text and "13,224,966" in text
    assert "head products: ['float32']" in text and "networks' products: ['float32']" in text  # the defaults
    bf16 = [{**run, "head_dtype": "bfloat16", "mend_dtype": "bfloat16"} if run["side"] == "ours" else run
            for run in runs]  # fmt: skip
    text = bench.format_report("small", 13_224_966, bf16, summary)
    assert "head products: ['bfloat16']" in text and "networks' products: ['bfloat16']" in text
    with pytest.raises(ValueError, match="ours"):
        bench.summarise(runs[:1])


def test_json_report_round_trips(bench, tmp_path):
    report = {"shape": "small", "summary": {"speedup": 3.05}, "runs": [_run("ours", 1, [0.1], 1.0)], "note": "中文"}
    path = tmp_path / "out" / "report.json"
    bench.write_json(path, report)
    assert json.loads(path.read_text(encoding="utf-8")) == report
