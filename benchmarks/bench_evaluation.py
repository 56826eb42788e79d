"""Evaluation throughput: edits scored per second by today's path and by the path before the speed-ups, in one run.

The demo's evaluation (`examples/demo.py`: the strict reading, ranking among every CLDR object as a second reading,
5 same-relation neighbours and 3 other facts per edit, every language) on the first `--n_edits` held-out facts per
editing language, alternating four paths `--rounds` times each, each adding one speed-up to the one before:

- `uncached`: no frozen-prefix cache (`cache_bytes=0`), every vocabulary argmax a float32 product
  (`hf_lime.fast_argmax.plain_products`), one prompt length per forward (`length_bucket=1`): the evaluation
  before the speed-ups;
- `cached`: the frozen-prefix cache (`hf_lime.prefix_cache`);
- `fast`: and the checked bfloat16 argmax (`hf_lime.fast_argmax`);
- `bucketed`: `evaluate_editor`'s default: and prompts right-padded to a multiple of 8 tokens, batched by padded
  width (`length_bucket=8`: fewer, fuller forwards).

- `workers` (with `--workers N`, N > 1): `bucketed` with the edits shared among N forked one-thread processes
  (`evaluate_editor(num_workers=N)`); give the other paths `--threads N` so that every path has the same cores.

`--paths` times only some of them beside `uncached` (e.g. `--paths workers` for the end-to-end ratio).

All paths give the same records (checked and reported). Prints the median edits per second of each path and the
ratios to `uncached`; `--json` writes them.

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluation.py --editor outputs/demo --n_edits 6 --rounds 2
    python benchmarks/bench_evaluation.py --editor outputs/demo --n_edits 6 --rounds 2 --threads 2 --workers 2

`--editor` is a folder written by `make demo` (the editor, its `settings.json`, and through its base model path the
fact model).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from demo_controls import demo_options

from hf_lime import LimeEditor, fast_argmax
from hf_lime.data import load_cldr_facts
from hf_lime.evaluation import evaluate_editor

PATHS = ("uncached", "cached", "fast", "bucketed", "workers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="outputs/demo", help="A folder written by `make demo`.")
    parser.add_argument("--n_edits", type=int, default=4, help="Held-out facts edited per editing language.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed evaluations of each path (alternating).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed rounds first (the product routes get chosen).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="Also time `bucketed` in this many worker processes.")
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help="Time only these paths (`uncached` always runs: it is the baseline).")  # fmt: skip
    parser.add_argument("--json", default=None, help="Write the figures to this file.")
    args = parser.parse_args()
    if args.n_edits < 1 or args.rounds < 1 or args.threads < 1 or args.warmup < 0:
        parser.error("--n_edits, --rounds and --threads must be >= 1, --warmup >= 0")
    return args


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    editor = LimeEditor.from_pretrained(args.editor)
    info = editor.training_info or {}
    languages = list(editor.languages)
    splits = load_cldr_facts(languages, seed=0, label_language=info.get("label_language", "own"))
    # the demo's own evaluation (its settings.json), on the first `n_edits` facts per editing language
    options = {**demo_options(Path(args.editor), languages, splits), "n_edits": args.n_edits, "progress": False}
    model = editor.model.eval()
    paths = PATHS if args.workers > 1 else PATHS[:-1]
    if args.paths:
        paths = tuple(path for path in paths if path == "uncached" or path in args.paths)
    times: dict[str, list[float]] = {path: [] for path in paths}
    records: dict[str, dict] = {}
    for round_index in range(-args.warmup, args.rounds):
        for path in paths if round_index % 2 == 0 else paths[::-1]:
            plain = fast_argmax.plain_products() if path in ("uncached", "cached") else nullcontext()
            path_options = {
                "num_workers": args.workers if path == "workers" else 1,
                "cache_bytes": 0 if path == "uncached" else 1 << 30,
                "length_bucket": 8 if path in ("bucketed", "workers") else 1,
            }
            start = time.perf_counter()
            with plain:
                result = evaluate_editor(model, editor.tokenizer, splits["test"], "masked_lm", **path_options,
                                         **options)  # fmt: skip
            if round_index >= 0:
                times[path].append(time.perf_counter() - start)
            records.setdefault(path, result.records)
    same = all(records[path] == records["uncached"] for path in paths)
    n_edits = args.n_edits * len(languages)
    rate = {path: n_edits / statistics.median(values) for path, values in times.items()}
    ratios = {path: rate[path] / rate["uncached"] for path in paths}
    report = {"cpu": cpu_name(), "threads": args.threads, "workers": args.workers, "edits": n_edits,
              "rounds": args.rounds, "warmup": args.warmup, "seconds": times, "edits_per_second": rate,
              "ratio_to_uncached": ratios, "ratio": ratios[paths[-1]], "same_records": same}  # fmt: skip
    print(f"{n_edits} edits, {args.rounds} rounds, {args.threads} thread(s), {args.workers} worker(s), "
          f"{report['cpu']}")  # fmt: skip
    for path in paths:
        print(f"{path:>9}: median {statistics.median(times[path]):.1f} s = {rate[path]:.3f} edits/s "
              f"({ratios[path]:.2f}x uncached)")  # fmt: skip
    print(f"same records on every path: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
