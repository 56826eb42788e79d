"""benchmarks/bench_fused_head_loss.py: its one-pass loss and gradient equal autograd's two passes.

Only correctness is tested (small shapes, several chunk sizes, one that does not divide the vocabulary); the timings
are measured by the benchmark, not asserted.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from conftest import REPO_ROOT

BENCH_PATH = REPO_ROOT / "benchmarks" / "bench_fused_head_loss.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_fused_head_loss", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("chunk", [7, 64, 1000, 5000])
def test_one_pass_equals_autograd(bench, chunk):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 16, generator=generator)
    bias = torch.randn(1000, generator=generator)
    h = torch.randn(3, 16, generator=generator) * 3  # logits spread enough for the online max to move
    targets = torch.tensor([5, 999, 0])
    expected_loss, expected_grad = bench.two_passes(h, weight, bias, targets)
    loss, grad = bench.one_pass(h, weight, bias, targets, chunk)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
