"""Episode benchmark: one LiME-MEND training episode (forward + backward) with vocabulary logits at the target
positions only (`hf_lime.head`) over the same episode with full `(batch, seq, vocab)` logits gathered afterwards.

Both variants run on the same episodes, interleaved, in one process; the ratio is reported (never an absolute
limit). The model is multilingual-e5-small with its fact-completion head (250k-token vocabulary), built offline and
cached by `hf-lime prepare-model me5-small-facts` (the demo's model).

    OMP_NUM_THREADS=2 python benchmarks/bench_episode.py --episodes 6 --json outputs/bench_episode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import get_peft_model

import hf_lime.head as head_module
from hf_lime import LimeConfig
from hf_lime.data import load_cldr_facts
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.trainer.episode import run_episode

LANGUAGES = ["en", "fr", "de", "es", "ru", "zh", "ar", "ja"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="outputs/models/me5-small-facts")
    parser.add_argument("--episodes", type=int, default=6, help="Timed episodes per variant.")
    parser.add_argument("--batch_size", type=int, default=2, help="Episodes per step (as the demo).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="Write the results here.")
    return parser.parse_args()


@contextmanager
def full_logits():
    """The baseline: no output-embedding hook, full logits computed and gathered at the same positions."""
    original = head_module._output_embeddings
    head_module._output_embeddings = lambda model: None
    try:
        yield
    finally:
        head_module._output_embeddings = original


def load(model_dir: str):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from hf_lime.models.prepare import prepare_model

    folder = prepare_model("me5-small-facts", model_dir, languages=LANGUAGES)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager")
    return model, tokenizer


def time_episode(model, episode) -> float:
    start = time.perf_counter()
    output = run_episode(model, episode, "masked_lm", c_edit=1.0, c_loc=1.0, c_l0=0.0)
    output.loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base, tokenizer = load(args.model_dir)
    model = get_peft_model(base, LimeConfig(languages=LANGUAGES, editor="mend", mend_rank=256)).train()
    items = load_cldr_facts(LANGUAGES, seed=0)["train"]
    dataset = EpisodeDataset(items, seed=0, languages=LANGUAGES, n_edit=1, n_retain=4)
    collate = EpisodeCollator(tokenizer, "masked_lm", max_length=48)
    episodes = [collate([dataset[2 * i], dataset[2 * i + 1]][: args.batch_size]) for i in range(args.episodes + 1)]
    times: dict[str, list[float]] = {"sliced": [], "full": []}
    time_episode(model, episodes[0])  # warm-up
    with full_logits():
        time_episode(model, episodes[0])
    for episode in episodes[1:]:
        times["sliced"].append(time_episode(model, episode))
        with full_logits():
            times["full"].append(time_episode(model, episode))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["full_vs_sliced"] = result["full"] / result["sliced"]
    result.update({"episodes": args.episodes, "threads": torch.get_num_threads(), "vocab": base.config.vocab_size})
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
