"""Smoke test of benchmarks/bench_edit.py on the tiny size: it runs end to end and reports the three ratios.

No timing or memory limits are asserted here: the numbers are measured, not tested (see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
from conftest import REPO_ROOT

BENCH_PATH = REPO_ROOT / "benchmarks" / "bench_edit.py"
RATIOS = ("edit_time_vs_fwd_bwd", "edited_forward_vs_forward", "edit_memory_vs_fwd_bwd")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_edit", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tiny_run_writes_three_finite_positive_ratios(bench, tmp_path):
    out = tmp_path / "bench.json"
    returned = bench.main(["--sizes", "tiny", "--repeats", "1", "--warmup", "1", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert list(report["results"]) == ["tiny"]
    tiny = report["results"]["tiny"]
    for name in RATIOS:
        value = tiny["ratios"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
        assert isinstance(tiny["meets_target"][name], bool)
    assert all(v > 0 for v in tiny["times_ms"].values())
    assert tiny["peak_memory_mb"]["edit"] > 0 and tiny["peak_memory_mb"]["fwd_bwd"] > 0
    assert tiny["edited_layers"] == 6 and tiny["edit_rank"] == 8 * 16
    assert report["environment"]["memory_method"] == "profiler"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--sizes", "huge"], "huge"),
        (["--repeats", "0"], "--repeats"),
        (["--seq-len", "2"], "--seq-len"),
        (["--device", "cuda", "--clock", "cpu"], "--clock cpu"),
    ],
)
def test_bad_arguments_raise_clear_errors(bench, argv, match):
    with pytest.raises(ValueError, match=match):
        bench.parse_args(argv)
