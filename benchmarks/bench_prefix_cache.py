"""Prefix-cache benchmark: scoring the same prompts again and again, with and without `hf_lime.prefix_cache`.

One batch of fact prompts is scored `--repeats` times the way the evaluation scores them (vocabulary logits at the
target positions only, `hf_lime.head.target_logits`, under `torch.no_grad()`; `--score hidden`: the encoder's output
only), alternately without and with the cache, in one process on one model; before each pair of scorings an edit of
the first prompt is applied (and reverted after), as when prompts are scored after each of many edits. The first
cached scoring (which fills the cache) is not timed; it is reported apart. Printed: both medians, their ratio
(uncached ÷ cached, the speed-up), the largest difference of the scores, and the cache's counters (an edit must never
invalidate it).

Models: `me5-small-facts` (multilingual-e5-small with its fact head, built by `hf-lime prepare-model` on first use,
which takes minutes), `me5-small` (the converted encoder with a new, random MLM head: the same shapes, built in
seconds) and `tiny` (a random 6-block BERT from a config, for a smoke test). LIME: MEND on the feed-forward layers of
the top `--num_top_layers` blocks (the default 3 of 12 for me5: blocks 0-8 are cached).

    OMP_NUM_THREADS=1 python benchmarks/bench_prefix_cache.py --model me5-small-facts --repeats 10 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/bench_prefix_cache.py --tiny --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.head import target_logits
from hf_lime.prefix_cache import prefix_cache

LANGUAGES = ["en", "fr", "de", "es", "ru", "zh"]
MODELS = ("me5-small-facts", "me5-small", "tiny")
TINY = {"vocab_size": 500, "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 64}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="me5-small-facts", choices=MODELS)
    parser.add_argument("--tiny", action="store_true", help="Shorthand for `--model tiny` (a smoke test).")
    parser.add_argument("--model_dir", default="outputs/models/me5-small-facts", help="Where me5-small-facts lives.")
    parser.add_argument("--prompts", type=int, default=32, help="Prompts in the scored batch.")
    parser.add_argument("--repeats", type=int, default=10, help="Timed scorings with and without the cache.")
    parser.add_argument("--num_top_layers", type=int, default=3, help="Edited top blocks (the cache starts there).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="`cpu`: CPU time of the process.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--score",
        default="target_logits",
        choices=["target_logits", "hidden"],
        help="`target_logits`: as the evaluation scores (the vocabulary product at the target positions included); "
        "`hidden`: the encoder's last hidden states only (what the cache can speed up, without the head).",
    )
    parser.add_argument("--no_edits", action="store_true", help="Score the unedited model (no edit per repeat).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model = "tiny"
    if args.repeats < 1 or args.prompts < 1:
        raise ValueError("--repeats and --prompts must be at least 1.")
    return args


# ----------------------------------------------------------------------------------------------- model and prompts
def load_base(args: argparse.Namespace):
    """The masked LM and its tokenizer (`None` for the tiny model)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

    if args.model == "tiny":
        torch.manual_seed(0)
        return BertForMaskedLM(BertConfig(**TINY, attn_implementation="eager")).eval(), None
    if args.model == "me5-small-facts":
        from hf_lime.real_models.prepare import prepare_model

        folder = prepare_model("me5-small-facts", args.model_dir, languages=LANGUAGES)
    else:
        from hf_lime.real_models.me5 import build_me5_small, default_cache_dir

        folder = build_me5_small(default_cache_dir() / "me5-small", progress=False)
    torch.manual_seed(0)  # the random MLM head of `me5-small`
    model = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def prompt_batch(tokenizer, count: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`count` CLDR fact prompts (several languages, several lengths: padded) and the language of each."""
    from hf_lime.data import load_cldr_facts
    from hf_lime.data.encoding import encode_example, pad_batch

    if tokenizer is None:
        return tiny_batch(count), [LANGUAGES[i % len(LANGUAGES)] for i in range(count)]
    items = load_cldr_facts(LANGUAGES, seed=0)["test"]
    pairs = [(item, k) for item in items for k in range(len(item["languages"]))][:count]
    examples = [encode_example(tokenizer, "masked_lm", it["prompts"][k], it["targets"][k], max_length=48)
                for it, k in pairs]  # fmt: skip
    return pad_batch(tokenizer, examples), [item["languages"][k] for item, k in pairs]


def tiny_batch(count: int, seq_len: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, TINY["vocab_size"], (count, seq_len), generator=g)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (count,), generator=g)
    attention_mask = (torch.arange(seq_len) < lengths[:, None]).long()
    input_ids[attention_mask == 0] = 0
    labels = torch.full_like(input_ids, -100)
    input_ids[:, 3], labels[:, 3] = 4, 7
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ----------------------------------------------------------------------------------------------- timing
def clock(args: argparse.Namespace) -> Callable[[], float]:
    if args.device == "cuda":

        def synced() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return synced
    return time.process_time if args.clock == "cpu" else time.perf_counter


def timed(now: Callable[[], float], fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = now()
    out = fn()
    return now() - start, out


def bench(args: argparse.Namespace) -> dict:
    base, tokenizer = load_base(args)
    config = LimeConfig(languages=LANGUAGES, num_top_layers=args.num_top_layers, use_lime_mask=True)
    model = get_peft_model(base, config).to(args.device)
    batch, languages = prompt_batch(tokenizer, args.prompts)
    batch = {key: value.to(args.device) for key, value in batch.items()}
    edit_batch = {key: value[:1] for key, value in batch.items()}
    now = clock(args)

    body = model.get_base_model().base_model  # e.g. `BertModel` of a `BertForMaskedLM`
    inputs = {key: value for key, value in batch.items() if key != "labels"}

    def score() -> torch.Tensor:
        with torch.no_grad():
            if args.score == "hidden":
                return body(**inputs).last_hidden_state
            return target_logits(model, batch, "masked_lm").logits

    plain_times, cached_times, largest = [], [], 0.0
    score()  # warm-up
    with prefix_cache(model) as cache:
        fill_time, _ = timed(now, score)
        for _ in range(args.repeats):
            edit = None if args.no_edits else model.edit(edit_batch, language=languages[0])
            with cache.paused():  # the plain forward, the cache's hooks idle
                plain_time, plain = timed(now, score)
            cached_time, cached = timed(now, score)
            plain_times.append(plain_time)
            cached_times.append(cached_time)
            largest = max(largest, float((plain - cached).abs().max()))
            if edit is not None:
                edit.revert()
        counters = {name: getattr(cache, name) for name in ("hits", "misses", "bypassed", "invalidations")}
        counters["nbytes"] = cache.nbytes
    return {
        "model": args.model,
        "score": args.score,
        "prompts": int(batch["input_ids"].shape[0]),
        "seq_len": int(batch["input_ids"].shape[1]),
        "first_block": cache.first_block,
        "blocks": len(cache.layout.blocks),
        "edits": not args.no_edits,
        "clock": "cuda-synchronised wall" if args.device == "cuda" else args.clock,
        "threads": torch.get_num_threads(),
        "median_uncached_s": statistics.median(plain_times),
        "median_cached_s": statistics.median(cached_times),
        "speedup": statistics.median(plain_times) / statistics.median(cached_times),
        "fill_s": fill_time,
        "max_abs_diff": largest,
        "cache": counters,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = bench(args)
    print(
        f"{result['model']} ({result['score']}): {result['prompts']} prompts x {result['seq_len']} tokens, blocks 0-"
        f"{result['first_block'] - 1} of {result['blocks']} cached, {args.repeats} repeats ({result['clock']} clock)\n"
        f"  median uncached {result['median_uncached_s'] * 1e3:.2f} ms, cached {result['median_cached_s'] * 1e3:.2f} "
        f"ms, ratio {result['speedup']:.2f}x (first, filling: {result['fill_s'] * 1e3:.2f} ms)\n"
        f"  max |score difference| {result['max_abs_diff']:.2e}; cache {result['cache']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
