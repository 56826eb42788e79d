"""Would one pass over the vocabulary matrix for a loss and its gradient beat the two that training does today?

A training episode's cross-entropy at a few answer positions reads the frozen output embeddings `W` (119k × 768 on
mBERT, 250k × 384 on multilingual-e5) twice: the forward's logits `h Wᵀ + b` and the backward's `g W`, each in the
faster form for this CPU (`hf_lime.head_product`). Chunked over the vocabulary with an online softmax, the loss and
`∂loss/∂h = softmax(h Wᵀ + b) W / rows − W[targets] / rows` can be had in one pass, each chunk of `W` read once from
memory and once more from cache. This script times both in one process, alternating, on one thread, checks that
they agree, and prints the ratio (session 34: the fused pass in PyTorch operations was not faster on the AMD EPYC
host; results.md §5 and docs/benchmarks.md).

    OMP_NUM_THREADS=1 python benchmarks/bench_fused_head_loss.py --rows 3 --chunks 512 1024 2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_lime.head_product import head_product

SHAPES = {"mbert": (119_547, 768), "me5": (250_002, 384)}


def two_passes(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor) -> tuple:
    """Today's path: `head_product` forward, cross-entropy, autograd backward to `h`."""
    h = h.clone().requires_grad_()
    loss = F.cross_entropy(head_product(h, weight, bias), targets)
    return loss.detach(), torch.autograd.grad(loss, h)[0]


def one_pass(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, chunk: int) -> tuple:
    """The loss and its gradient for `h` from one chunked pass over `weight` (online softmax)."""
    rows = h.shape[0]
    top = torch.full((rows, 1), -float("inf"))
    total = torch.zeros(rows, 1)
    expected = torch.zeros(rows, h.shape[1])  # Σ_v exp(l_v − top) w_v
    for start in range(0, weight.shape[0], chunk):
        block = weight[start : start + chunk]
        logits = torch.addmm(bias[start : start + chunk], h, block.T)
        new_top = torch.maximum(top, logits.max(dim=1, keepdim=True).values)
        rescale = torch.exp(top - new_top)
        weights = torch.exp(logits - new_top)
        total = total * rescale + weights.sum(dim=1, keepdim=True)
        expected = expected * rescale + weights @ block
        top = new_top
    target_logits = (h * weight[targets]).sum(dim=1) + bias[targets]
    loss = (top.squeeze(1) + total.log().squeeze(1) - target_logits).mean()
    return loss, (expected / total - weight[targets]) / rows


def elapsed_ms(fn: Callable[[], object]) -> float:
    """Milliseconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def bench_shape(name: str, rows: int, chunks: list[int], repeats: int, seed: int) -> dict:
    vocab, hidden = SHAPES[name]
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, hidden, generator=generator) * 0.02
    bias = torch.randn(vocab, generator=generator) * 0.01
    h = torch.randn(rows, hidden, generator=generator)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    loss, grad = two_passes(h, weight, bias, targets)  # also makes head_product's choice of forms
    row = {"shape": name, "vocab": vocab, "hidden": hidden, "rows": rows, "fused": {}}
    for chunk in chunks:
        fused_loss, fused_grad = one_pass(h, weight, bias, targets, chunk)
        error = float((fused_grad - grad).abs().max() / grad.abs().max())
        assert abs(float(fused_loss - loss)) < 1e-4 and error < 1e-4, (chunk, float(fused_loss - loss), error)
    baseline, fused = [], {chunk: [] for chunk in chunks}
    for _ in range(repeats):  # alternating, so that both see the same machine
        baseline.append(elapsed_ms(lambda: two_passes(h, weight, bias, targets)))
        for chunk in chunks:
            fused[chunk].append(elapsed_ms(lambda c=chunk: one_pass(h, weight, bias, targets, c)))
    row["two_passes_ms"] = round(statistics.median(baseline), 1)
    for chunk, times in fused.items():
        ms = statistics.median(times)
        row["fused"][chunk] = {"ms": round(ms, 1), "speedup": round(row["two_passes_ms"] / ms, 3)}
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=3, help="Answer positions per loss (an episode has 1-4).")
    parser.add_argument("--chunks", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write the rows here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [bench_shape(name, args.rows, args.chunks, args.repeats, args.seed) for name in args.shapes]
    for row in rows:
        fused = ", ".join(f"chunk {c}: {v['ms']} ms ({v['speedup']}×)" for c, v in row["fused"].items())
        print(f"{row['shape']} ({row['vocab']} × {row['hidden']}, {row['rows']} rows): two passes "
              f"{row['two_passes_ms']} ms; one pass {fused}")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
