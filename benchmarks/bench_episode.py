"""Episode benchmark: one LiME-MEND training episode against the floor of the work it cannot avoid.

The *episode* is `run_episode` (edit → update NLL + retain KL + L0) plus its meta-backward. The *floor* is one
forward of every row the episode reads — the edit row, the update row and the retain row twice (before and after the
edit) — with vocabulary logits only at the target positions, plus one backward of the edit row's loss to the edited
layers (what any gradient-based editor needs). Both are timed on the same episodes, interleaved, in one process; the
ratio *episode ÷ floor* is reported, never an absolute time. The episode is also split into its parts: the capture
(the edit row's forward and backward, the retain row riding along in that forward for its base logits), the editor's
networks, the edited forwards and the meta-backward; the editor's networks alone (forward and backward on the same
captured edits) are also given as a share of the episode. `--keep_freed_memory` sets the allocator as `LimeTrainer`
does on a CPU (`LimeTrainingArguments.keep_freed_memory`).

Models: multilingual-e5-small with its fact-completion head (`hf-lime prepare-model me5-small-facts`, the demo's
model) and a random-weight model of mBERT-base's shape (12 × 768, FFN 3072, 119,547-token vocabulary). Editor:
LiME-MEND with the reference's rank 1920, one edit, one update and one retain row per episode.

    OMP_NUM_THREADS=1 python benchmarks/bench_episode.py --episodes 10 --threads 1 --keep_freed_memory \
        --json outputs/bench_episode.json

`--processes` also measures training throughput (episodes per second) of `examples/train_lime.py` on CLDR facts
with one process and with `accelerate launch --multi_gpu --num_processes 2` (two gloo processes on a CPU machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model

from hf_lime import LimeConfig, head_product
from hf_lime.data import load_cldr_facts
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.head import target_logits
from hf_lime.trainer.episode import retain_kl, run_episode
from hf_lime.tuner.context import EditContext, capture_layer_grads

LANGUAGES = ["en", "fr", "de", "es", "ru", "zh"]
REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="outputs/models/me5-small-facts")
    parser.add_argument("--models", nargs="+", default=["me5-small-facts", "mbert-base-shaped"])
    parser.add_argument("--episodes", type=int, default=10, help="Timed episodes per model.")
    parser.add_argument("--rank", type=int, default=1920)
    parser.add_argument(
        "--compute_dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="`LimeConfig.mend_compute_dtype` values to time, one editor each, on the same episodes and model.",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--plain_head",
        action="store_true",
        help="Vocabulary products as plain `F.linear` (not in the form `hf_lime.head_product` finds faster).",
    )
    parser.add_argument("--processes", action="store_true", help="Also time 1 vs 2 training processes.")
    parser.add_argument("--steps", type=int, default=30, help="Training steps per process count (--processes).")
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument(
        "--keep_freed_memory", action="store_true", help="Call keep_freed_memory() first (as LimeTrainer on a CPU)."
    )
    return parser.parse_args()


def load_model(name: str, model_dir: str):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

    from hf_lime.real_models.prepare import prepare_model

    folder = prepare_model("me5-small-facts", model_dir, languages=LANGUAGES)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if name == "me5-small-facts":
        return AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval(), tokenizer
    torch.manual_seed(0)
    config = BertConfig(vocab_size=119_547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, attn_implementation="eager")  # fmt: skip
    # the me5 tokenizer's ids are < 250k; fold them into mBERT's vocabulary size for the random-weight model
    return BertForMaskedLM(config).eval(), tokenizer


def episodes(tokenizer, count: int, vocab_size: int) -> list[dict]:
    items = load_cldr_facts(LANGUAGES, seed=0)["train"]
    dataset = EpisodeDataset(items, seed=0, languages=LANGUAGES, n_edit=1, n_retain=1)
    collate = EpisodeCollator(tokenizer, "masked_lm", max_length=48)
    batches = [collate([dataset[i]]) for i in range(count)]
    for batch in batches:
        for part in batch.values():
            part["input_ids"] %= vocab_size
            labels = part["labels"]
            labels[labels >= 0] %= vocab_size
    return batches


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_episode(model, episode) -> float:
    def run():
        run_episode(model, episode, "masked_lm", c_edit=0.1, c_loc=1.0, c_l0=1.0).loss.backward()
        model.zero_grad(set_to_none=True)

    return _timed(run)


def time_floor(model, episode) -> float:
    tuner = model.base_model
    edit = _inputs(episode["edit"])

    def run():
        capture_layer_grads(tuner.model, tuner.lime_layers, edit, None, "masked_lm")
        with torch.no_grad():
            for part in ("update", "retain", "retain"):
                target_logits(model, episode[part], "masked_lm")

    return _timed(run)


def _inputs(part: dict) -> dict:
    """An episode part's model inputs (without its `lang_ids`)."""
    return {k: v for k, v in part.items() if k != "lang_ids"}


def _edit_context(model, episode, passenger_batch: dict | None = None) -> EditContext:
    """The `EditContext` that `run_episode` builds for the episode's edit (through `compute_edit`)."""
    tuner = model.base_model
    return EditContext(tuner.model, tuner.lime_layers, _inputs(episode["edit"]), episode["edit"]["lang_ids"],
                       tuner.masks, tuner.edit_lrs, task="masked_lm", passenger_batch=passenger_batch)  # fmt: skip


def split_episode(model, episode) -> dict[str, float]:
    """The episode's parts, timed one after the other (the same computation as `run_episode`)."""
    tuner, times = model.base_model, {}
    lang_ids = episode["edit"]["lang_ids"]
    ctx = _edit_context(model, episode, passenger_batch=_inputs(episode["retain"]))
    start = time.perf_counter()
    ctx.capture()  # the edit row's forward and backward, the retain row riding along in the forward
    base = ctx.passenger_logits
    times["unedited forward and backward (capture, retain riding along)"] = time.perf_counter() - start
    times["editor networks"] = _timed(lambda: times.setdefault("_out", tuner.editor.compute_deltas(ctx)))
    deltas = times.pop("_out").deltas
    start = time.perf_counter()
    with tuner.apply_deltas(deltas):
        post = target_logits(model, episode["update"], "masked_lm")
        edited = target_logits(model, episode["retain"], "masked_lm")
    loss = 0.1 * post.loss() + retain_kl(base, edited) + tuner.l0_penalty(lang_ids)
    times["edited forwards"] = time.perf_counter() - start
    times["meta-backward"] = _timed(loss.backward)
    model.zero_grad(set_to_none=True)
    return times


def time_networks(model, episode) -> tuple[float, float]:
    """The editor's networks alone on one captured edit: `compute_deltas` (masks, normalisation, networks) and the
    backward of a sum of the deltas' factors (every network weight gets a gradient, as in the meta-backward)."""
    ctx = _edit_context(model, episode)
    ctx.capture()
    start = time.perf_counter()
    deltas = model.base_model.editor.compute_deltas(ctx).deltas
    forward = time.perf_counter() - start
    total = sum(delta.B.sum() + delta.A.sum() for delta in deltas.values())
    backward = _timed(total.backward)
    model.zero_grad(set_to_none=True)
    return forward, backward


def bench_model(base, batches: list[dict], args, compute_dtype: str) -> dict:
    config = LimeConfig(languages=LANGUAGES, editor="mend", mend_rank=args.rank, mend_compute_dtype=compute_dtype)
    model = get_peft_model(base, config).train()
    time_episode(model, batches[0]), time_floor(model, batches[0])  # warm-up
    ep, floor, parts, nets = [], [], [], []
    for episode in batches[1:]:
        ep.append(time_episode(model, episode))
        floor.append(time_floor(model, episode))
        parts.append(split_episode(model, episode))
        nets.append(time_networks(model, episode))
    split = {key: statistics.median(p[key] for p in parts) for key in parts[0]}
    total = sum(split.values())
    return {
        "episode_s": statistics.median(ep),
        "floor_s": statistics.median(floor),
        "episode_over_floor": statistics.median(e / f for e, f in zip(ep, floor, strict=True)),
        "split_share": {key: value / total for key, value in split.items()},
        "networks_forward_s": statistics.median(f for f, _ in nets),
        "networks_backward_s": statistics.median(b for _, b in nets),
        "networks_over_episode": statistics.median((f + b) / e for (f, b), e in zip(nets, ep, strict=True)),
        "editor_parameters": sum(p.numel() for p in model.base_model.editor.parameters()),
    }


def bench_models(args) -> dict:
    """`{model name: {compute dtype: results}}`: each dtype on a freshly loaded model, on the same episodes, with its
    own floor timed interleaved with its episodes."""
    results: dict = {}
    for name in args.models:
        for dtype in args.compute_dtypes:
            base, tokenizer = load_model(name, args.model_dir)
            batches = episodes(tokenizer, args.episodes + 1, base.config.vocab_size)
            results.setdefault(name, {})[dtype] = bench_model(base, batches, args, dtype)
            print(name, dtype, json.dumps(results[name][dtype], indent=2), flush=True)
    return results


def throughput(processes: int, steps: int, threads: int) -> float:
    """Episodes per second of `examples/train_lime.py` on CLDR facts (one episode per process and optimizer step,
    the `cpu` recipe without validation), from the trainer's own runtime."""
    script = [str(REPO / "examples" / "train_lime.py"), "--model_name_or_path", "outputs/models/me5-small-facts",
              "--dataset", "cldr", "--languages", *LANGUAGES, "--max_steps", str(steps), "--skip_test", "true",
              "--output_dir", f"outputs/bench_processes_{processes}", "--save_strategy", "no", "--use_cpu",
              "--recipe", "cpu", "--eval_strategy", "no", "--mend_center", "true",
              "--report_to", "none", "--logging_steps", str(steps), "--mend_rank", "1920"]  # fmt: skip
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), *script]  # fmt: skip
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=True)
    metrics = json.loads((REPO / f"outputs/bench_processes_{processes}" / "train_results.json").read_text())
    del out
    return steps * processes / metrics["train_runtime"]


def cpu() -> dict:
    """The CPU the numbers were measured on: its model name and the vector/matrix extensions that set the speed of
    float32 and bfloat16 products (the ratio depends on them: see docs/benchmarks.md)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": name or platform.processor(), "extensions": [f for f in wanted if f in flags],
            "torch": torch.__version__}  # fmt: skip


def _forms() -> dict[str, str]:
    """The vocabulary-product forms chosen in this run, `{"forward, 2 rows, 250037x384": "wide", ...}`."""
    return {
        f"{direction}, {rows} rows, {'x'.join(map(str, shape))}": form
        for (direction, rows, shape, _, _), form in sorted(head_product.chosen_forms().items(), key=str)
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from hf_lime.trainer.malloc import keep_freed_memory

        print("keep_freed_memory applied:", keep_freed_memory())
    if args.plain_head:
        head_product.MIN_ELEMENTS = sys.maxsize  # nothing is tuned
    result: dict = {"threads": torch.get_num_threads(), "rank": args.rank, "episodes": args.episodes, "cpu": cpu()}
    result.update(bench_models(args))
    result["head_product"] = {"tuned": not args.plain_head, "forms": _forms()}
    if args.processes:
        one = throughput(1, args.steps, threads=2)
        two = throughput(2, args.steps, threads=1)
        result["episodes_per_s"] = {"1 process x 2 threads": one, "2 processes x 1 thread": two}
        print(json.dumps(result["episodes_per_s"], indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
