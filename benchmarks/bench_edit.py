"""Edit benchmark: what a LIME edit costs next to the forward and backward passes of the same model.

Three ratios, each measured side by side in one run (never absolute wall-clock limits):

- (a) `edit_time_vs_fwd_bwd`: `model.edit(batch, language=...)` + `edit.revert()` over one forward+backward of the
  same batch on the frozen base model, the loss backpropagated to all activations (target <= 1.5);
- (b) `edited_forward_vs_forward`: an inference forward with one applied edit over a plain forward of the unwrapped
  base model (target <= 1.10);
- (c) `edit_memory_vs_fwd_bwd`: peak memory an edit allocates over the peak of that forward+backward (target <= 1.3).

See benchmarks/README.md for the method. Examples:

    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py --sizes tiny --threads 1
    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py --sizes tiny,mbert-base --threads 1 --clock cpu --repeats 16 \
        --json outputs/bench_edit.json                  # a shared CPU machine: CPU time of this process
    python benchmarks/bench_edit.py --sizes mbert-base --device cuda
    python benchmarks/bench_edit.py --sizes mbert-base --memory-method rss   # fresh process per measurement
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

LANGUAGES = ["en", "fr", "de"]
EDIT_LANGUAGE = "fr"
SIZES = {
    "tiny": {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
             "intermediate_size": 32, "mask_token_id": 4},
    "mbert-base": {"vocab_size": 119547, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "intermediate_size": 3072, "mask_token_id": 103},
}  # fmt: skip
TARGETS = {"edit_time_vs_fwd_bwd": 1.5, "edited_forward_vs_forward": 1.10, "edit_memory_vs_fwd_bwd": 1.3}
MEMORY_OPS = ("forward", "fwd_bwd", "fwd_bwd_full", "edit")
MB = 2**20


@dataclass
class Op:
    """One measured operation; `prepare`/`cleanup` run outside the timed region."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], None] | None = None
    cleanup: Callable[[], None] | None = None


@dataclass
class Setup:
    """The models and batches of one size."""

    base: torch.nn.Module
    peft: torch.nn.Module
    batch: dict[str, torch.Tensor]
    edit_params: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,mbert-base", help=f"Comma-separated, from {sorted(SIZES)}.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per operation (median reported).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed repetitions before the timed ones.")
    parser.add_argument("--batch-size", type=int, default=8, help="Rows in the edit batch.")
    parser.add_argument("--seq-len", type=int, default=16, help="Tokens per row (all real, no padding).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads (CPU).")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: time.perf_counter; cpu: time.process_time (CPU seconds of this process, robust on a shared "
        "machine; meaningful with --threads 1 only).",
    )
    parser.add_argument(
        "--memory-method",
        default="profiler",
        choices=["profiler", "rss"],
        help="CPU peak memory: torch profiler allocation events (in process) or RSS high-water mark in a fresh "
        "process per measurement. CUDA always uses torch.cuda.max_memory_allocated.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Write the results here as JSON.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one RSS measurement
    args = parser.parse_args(argv)
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(args.sizes) - set(SIZES))
    if not args.sizes or unknown:
        raise ValueError(f"Unknown size(s) {unknown or args.sizes}; choose from {sorted(SIZES)}.")
    for name in ("repeats", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}.")
    if not 4 <= args.seq_len <= 512:
        raise ValueError(f"--seq-len must be in [4, 512] (the target sits at position 3), got {args.seq_len}.")
    if args.clock == "cpu" and args.device == "cuda":
        raise ValueError("--clock cpu measures CPU time; use --clock wall with --device cuda.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch.cuda.is_available() is False.")


# ---------------------------------------------------------------------------------------------------- models
def build_setup(size: str, batch_size: int, seq_len: int, device: str, seed: int = 0) -> Setup:
    """The base model, a LIME-wrapped model sharing its weights, and an MLM edit batch."""
    from peft import get_peft_model
    from transformers import BertConfig, BertForMaskedLM

    import hf_lime

    spec = dict(SIZES[size])
    mask_token_id = spec.pop("mask_token_id")
    torch.manual_seed(seed)
    config = BertConfig(**spec, max_position_embeddings=512, attn_implementation="eager")
    base = BertForMaskedLM(config).to(device).eval().requires_grad_(False)
    # Share parameters and buffers: get_peft_model replaces modules of the copy only, so `base` stays unwrapped.
    memo = {id(t): t for t in [*base.parameters(), *base.buffers()]}
    peft = get_peft_model(copy.deepcopy(base, memo), hf_lime.LimeConfig(languages=LANGUAGES)).eval()
    peft.to(device)
    edit_params = sum(p.numel() for n, p in peft.named_parameters() if ".lime_" in n)
    batch = make_batch(spec["vocab_size"], mask_token_id, batch_size, seq_len, device, seed)
    with torch.no_grad():  # prime MEND's running input statistics, as a trained editor has them
        peft.train()
        peft.base_model.compute_edit(batch, language=EDIT_LANGUAGE)
        peft.eval()
    return Setup(base=base, peft=peft, batch=batch, edit_params=edit_params)


def make_batch(vocab: int, mask_id: int, batch_size: int, seq_len: int, device: str, seed: int) -> dict:
    """Random ids, the mask token at position 3 of each row, a new target there and `-100` elsewhere."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    labels = torch.full_like(input_ids, -100)
    input_ids[:, 3] = mask_id
    labels[:, 3] = torch.randint(5, vocab, (batch_size,), generator=g)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def make_ops(s: Setup) -> dict[str, Op]:
    """The measured operations of one setup, by name."""
    inputs = {k: v for k, v in s.batch.items() if k != "labels"}
    params = list(s.base.parameters())
    holder: dict = {}

    def forward(model):
        with torch.no_grad():
            return model(**inputs).logits

    def fwd_bwd():
        s.base(**s.batch).loss.backward()

    def edit():
        s.peft.edit(s.batch, language=EDIT_LANGUAGE).revert()

    def capture():
        from hf_lime.tuner.context import capture_layer_grads  # internal: the edit's forward+backward only

        rows = s.batch["input_ids"].shape[0]
        lang_ids = torch.full((rows,), LANGUAGES.index(EDIT_LANGUAGE), device=s.batch["input_ids"].device)
        capture_layer_grads(s.peft.base_model.model, s.peft.base_model.lime_layers, s.batch, lang_ids)

    def with_activation_grads():  # the embedding output requires grad: backward reaches every activation
        holder["hook"] = s.base.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_())

    def set_requires_grad(flag: bool):
        for p in params:
            p.requires_grad_(flag)
            p.grad = None

    def apply_edit():
        holder["edit"] = s.peft.edit(s.batch, language=EDIT_LANGUAGE)

    return {
        # Compared pairs run next to each other in every round (see `paired_ratio`).
        "forward": Op("forward", lambda: forward(s.base)),
        "forward_edited": Op("forward_edited", lambda: forward(s.peft), apply_edit, lambda: holder["edit"].revert()),
        "forward_wrapped": Op("forward_wrapped", lambda: forward(s.peft)),
        "fwd_bwd": Op("fwd_bwd", fwd_bwd, with_activation_grads, lambda: holder["hook"].remove()),
        "edit": Op("edit", edit),
        "edit_capture": Op("edit_capture", capture),
        "fwd_bwd_full": Op("fwd_bwd_full", fwd_bwd, lambda: set_requires_grad(True), lambda: set_requires_grad(False)),
    }


# ---------------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ops(ops: dict[str, Op], repeats: int, warmup: int, device: str, clock: str = "wall") -> dict[str, list]:
    """
    Milliseconds of each timed run per op. Every round runs every op once, in the listed order on even rounds and
    reversed on odd ones (an ABBA design), so slow drift and the position in a round hit all ops alike.
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    samples: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for round_index in range(warmup + repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            op = ops[name]
            if op.prepare:
                op.prepare()
            _sync(device)
            start = now()
            op.run()
            _sync(device)
            elapsed = now() - start
            if op.cleanup:
                op.cleanup()
            if round_index >= warmup:
                samples[name].append(elapsed * 1e3)
    return samples


# ---------------------------------------------------------------------------------------------------- memory
def peak_bytes(op: Op, device: str) -> int:
    """Peak bytes allocated by tensors while `op` runs, above what was allocated before it (in this process)."""
    if op.prepare:
        op.prepare()
    try:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            op.run()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        return _profiler_peak(op.run)
    finally:
        if op.cleanup:
            op.cleanup()


def _profiler_peak(fn: Callable[[], object]) -> int:
    """Replay the CPU allocator's events recorded by `torch.profiler` and return the highest running total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def rss_probe(args: argparse.Namespace) -> int:
    """In a fresh process: run the op once (warm-up), reset the RSS high-water mark, run it again, report the rise."""
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so freed tensors go back to the OS instead of the heap
    op = make_ops(build_setup(args.sizes[0], args.batch_size, args.seq_len, "cpu", args.seed))[args.probe]
    for _ in range(2):
        gc.collect()
        libc.malloc_trim(0)
        before = _proc_status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        if op.prepare:
            op.prepare()
        op.run()
        peak = _proc_status_kb("VmHWM")
        if op.cleanup:
            op.cleanup()
    return (peak - before) * 1024


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status; the rss memory method needs Linux.")


def rss_peak_bytes(size: str, op_name: str, args: argparse.Namespace) -> int:
    """Run [`rss_probe`] for one op in a fresh interpreter and return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", op_name, "--sizes", size]
    cmd += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
    cmd += ["--seed", str(args.seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Memory probe {op_name!r} for {size!r} failed:\n{done.stderr[-2000:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def measure_memory(size: str, ops: dict[str, Op], args: argparse.Namespace) -> dict[str, float]:
    """Peak MB per op of `MEMORY_OPS`, with the method `args` selects."""
    result = {}
    for name in MEMORY_OPS:
        if args.device == "cpu" and args.memory_method == "rss":
            result[name] = rss_peak_bytes(size, name, args) / MB
        else:
            gc.collect()
            result[name] = peak_bytes(ops[name], args.device) / MB
    return result


# ---------------------------------------------------------------------------------------------------- report
def paired_ratio(samples: dict[str, list], num: str, den: str) -> float:
    """Median over rounds of `num / den` measured in the same round: drift between rounds cancels out."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den], strict=True))


def ratios(samples: dict[str, list], memory: dict[str, float]) -> dict[str, float]:
    return {
        "edit_time_vs_fwd_bwd": paired_ratio(samples, "edit", "fwd_bwd"),
        "edited_forward_vs_forward": paired_ratio(samples, "forward_edited", "forward"),
        "edit_memory_vs_fwd_bwd": memory["edit"] / memory["fwd_bwd"],
        # context, no targets
        "edit_time_vs_fwd_bwd_full": paired_ratio(samples, "edit", "fwd_bwd_full"),
        "edit_memory_vs_fwd_bwd_full": memory["edit"] / memory["fwd_bwd_full"],
        "wrapped_forward_vs_forward": paired_ratio(samples, "forward_wrapped", "forward"),
        "edit_capture_vs_fwd_bwd": paired_ratio(samples, "edit_capture", "fwd_bwd"),
    }


def bench_size(size: str, args: argparse.Namespace) -> dict:
    setup = build_setup(size, args.batch_size, args.seq_len, args.device, args.seed)
    ops = make_ops(setup)
    samples = time_ops(ops, args.repeats, args.warmup, args.device, args.clock)
    times = {name: statistics.median(values) for name, values in samples.items()}
    memory = measure_memory(size, ops, args)
    r = ratios(samples, memory)
    return {
        "base_parameters": sum(p.numel() for p in setup.base.parameters()),
        "editor_parameters": setup.edit_params,
        "edited_layers": len(setup.peft.base_model.lime_layers),
        "edit_rank": int(setup.batch["attention_mask"].sum()),
        "times_ms": times,
        "times_spread": {name: (max(v) - min(v)) / times[name] for name, v in samples.items()},
        "peak_memory_mb": memory,
        "ratios": r,
        "meets_target": {k: r[k] <= v for k, v in TARGETS.items()},
    }


def format_table(results: dict[str, dict]) -> str:
    rows = [f"{'size':<11} {'ratio':<27} {'value':>7} {'target':>7}  ok"]
    for size, res in results.items():
        for key, value in res["ratios"].items():
            target = TARGETS.get(key)
            ok = "" if target is None else ("yes" if value <= target else "NO")
            rows.append(f"{size:<11} {key:<27} {value:7.3f} {'' if target is None else f'{target:7.2f}':>7}  {ok}")
        times = ", ".join(f"{k} {v:.1f}" for k, v in res["times_ms"].items())
        memory = ", ".join(f"{k} {v:.1f}" for k, v in res["peak_memory_mb"].items())
        rows.append(f"{'':<11} times ms: {times}")
        rows.append(f"{'':<11} peak MB: {memory}")
    return "\n".join(rows)


def environment(args: argparse.Namespace) -> dict:
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": args.device,
        "clock": args.clock,
        "memory_method": "torch.cuda.max_memory_allocated" if args.device == "cuda" else args.memory_method,
    }
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table, write JSON when asked, and return the results."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe is not None:
        print(json.dumps({"peak_bytes": rss_probe(args)}))
        return {}
    results = {size: bench_size(size, args) for size in args.sizes}
    settings = {k: getattr(args, k) for k in ("repeats", "warmup", "batch_size", "seq_len", "seed")}
    report = {"environment": environment(args), "settings": settings, "targets": TARGETS, "results": results}
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
