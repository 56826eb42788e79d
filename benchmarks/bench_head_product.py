"""The vocabulary product at the target positions, every form of `hf_lime.head_product`, by number of rows.

Times each forward form (`F.linear(h, W, b)` and `(W hᵀ)ᵀ + b`) and each backward form (`g W`, plain and with the
rows of `g` padded to a multiple of four) on a random matrix of multilingual-e5's vocabulary shape (250,037 × 384),
1 thread by default, the median of `--repeats` calls after one warm-up call. It shows why `hf_lime.head_product`
chooses the form per CPU: which one is faster for a few rows depends on the CPU's BLAS.

    OMP_NUM_THREADS=1 python benchmarks/bench_head_product.py --json outputs/bench_head_product.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_episode import cpu  # noqa: E402

from hf_lime.head_product import BACKWARDS, FORWARDS  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=250_037)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def median_ms(fn, *args, repeats: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    weight, bias = torch.randn(args.vocab, args.hidden), torch.randn(args.vocab)
    table = {}
    with torch.no_grad():
        for rows in args.rows:
            h, grad = torch.randn(rows, args.hidden), torch.randn(rows, args.vocab)
            row = {
                f"forward {name}": median_ms(fn, h, weight, bias, repeats=args.repeats)
                for name, fn in FORWARDS.items()
            }
            row |= {
                f"backward {name}": median_ms(fn, grad, weight, repeats=args.repeats) for name, fn in BACKWARDS.items()
            }
            table[rows] = row
            print(rows, " ".join(f"{key} {ms:.0f} ms" for key, ms in row.items()), flush=True)
    if args.json:
        result = {"cpu": cpu(), "threads": torch.get_num_threads(), "shape": [args.vocab, args.hidden], "ms": table}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
