"""The measurements behind the demo's design (docs/results.md, "The demo"): edit success, transfer and locality of
LiME-MEND on the demo's task, untrained at several step sizes (`sweep`) or after a short training (`train`).

    # untrained editor: the edit-success / locality frontier over the step size, with and without centring
    python benchmarks/demo_study.py sweep --model outputs/models/me5-small-cldr --step_sizes 2e-4 3e-4 4e-4 --center
    python benchmarks/demo_study.py sweep --model outputs/models/me5-small-cldr --step_sizes 1e-4 2e-4 3e-4
    # trained all -> all, then evaluated at the learned step sizes times each scale
    python benchmarks/demo_study.py train --model outputs/models/me5-small-cldr --steps 300 --center --scales 1 1.5 2
    # the reference recipe on the same number of episodes (10 per optimizer step)
    python benchmarks/demo_study.py train --model outputs/models/me5-small-cldr --steps 30 --center --recipe reference

Task: CLDR facts in en fr de es ru zh with each language's own names, the fact model of `python examples/demo.py
--label_language none` (it knows every fact; `make demo` itself now runs the paper's English-names protocol),
held-out countries edited to another object of their relation, answers ranked among the relation's objects
(`scoring="candidates"`). `--n_edits` per editing language, the same facts in every editing language (as the demo), 5
retain facts per edit.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from peft import get_peft_model
from transformers import AutoModelForMaskedLM, AutoTokenizer

from hf_lime import LimeConfig
from hf_lime.data import load_cldr_facts
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.evaluation import evaluate_editor
from hf_lime.trainer import LimeTrainer, LimeTrainingArguments

LANGUAGES = ["en", "fr", "de", "es", "ru", "zh"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["sweep", "train"])
    p.add_argument("--model", default="outputs/models/me5-small-cldr")
    p.add_argument("--step_sizes", nargs="+", type=float, default=[2e-4, 3e-4, 4e-4])
    p.add_argument("--center", action="store_true", help="mend_center=True")
    p.add_argument("--no_lime", action="store_true", help="use_lime_mask=False")
    p.add_argument("--num_top_layers", type=int, default=3)
    p.add_argument("--recipe", choices=["cpu", "reference"], default="cpu", help="LIME_RECIPES entry to train with.")
    p.add_argument("--steps", type=int, default=300, help="Optimizer steps (reference: 10 episodes each).")
    p.add_argument("--learning_rate", type=float, default=None, help="Default: the recipe's.")
    p.add_argument("--edit_lr_init", type=float, default=3e-4)
    p.add_argument("--c_edit", type=float, default=None, help="Default: the recipe's.")
    p.add_argument("--max_grad_norm", type=float, default=None, help="Gradient clipping (default: the recipe's).")
    p.add_argument("--mask_learning_rate", type=float, default=None, help="LiME masks' rate (default: recipe's).")
    p.add_argument("--warmup_steps", type=int, default=None, help="Linear warm-up steps (default: the recipe's).")
    p.add_argument("--n_update", type=int, default=1)
    p.add_argument("--scales", nargs="+", type=float, default=[1.0])
    p.add_argument("--n_edits", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def build(args, edit_lr_init: float):
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForMaskedLM.from_pretrained(args.model, attn_implementation="eager")
    config = LimeConfig(languages=LANGUAGES, mend_center=args.center, use_lime_mask=not args.no_lime,
                        num_top_layers=args.num_top_layers, edit_lr_init=edit_lr_init)  # fmt: skip
    return get_peft_model(base, config), tokenizer


def gather_centring_statistics(model, tokenizer, splits, episodes: int = 240) -> None:
    """What training would do to the centring statistics, without training: the editor's inputs of `episodes`
    training edits (the networks and step sizes stay as they are)."""
    dataset = EpisodeDataset(splits["train"], seed=0, languages=LANGUAGES, n_edit=1, n_retain=1)
    collate = EpisodeCollator(tokenizer, "masked_lm", max_length=48)
    tuner = model.base_model
    tuner.train()
    with torch.no_grad():
        for index in range(episodes):
            edit = collate([dataset[index]])["edit"]
            batch = {k: v for k, v in edit.items() if k != "lang_ids"}
            tuner.compute_edit(batch, [LANGUAGES[int(edit["lang_ids"][0])]])
    tuner.eval()


def evaluate(model, tokenizer, splits, args) -> dict:
    model.eval()
    result = evaluate_editor(model, tokenizer, splits["test"], "masked_lm", languages=LANGUAGES,
                             n_edits=args.n_edits, n_retain=5, seed=0, max_length=48, scoring="candidates",
                             progress=False)  # fmt: skip
    m = result.metrics
    return {k: round(m[k], 3) for k in ("reliability", "transfer", "locality", "hmean")} | {
        "es_by_language": {k: round(v, 3) for k, v in m["es_by_language"].items()}
    }


def train(model, tokenizer, splits, args) -> None:
    names = ("learning_rate", "c_edit", "max_grad_norm", "warmup_steps", "mask_learning_rate")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    train_args = LimeTrainingArguments.from_recipe(
        args.recipe, output_dir="outputs/demo_study", max_steps=args.steps, eval_strategy="no", save_strategy="no",
        load_best_model_at_end=False, early_stopping_patience=None, logging_steps=max(1, args.steps // 10),
        use_cpu=True, report_to="none", disable_tqdm=True, **overrides,
    )  # fmt: skip
    dataset = EpisodeDataset(splits["train"], seed=0, languages=LANGUAGES, n_edit=1, n_retain=4,
                             n_update=args.n_update)  # fmt: skip
    collator = EpisodeCollator(tokenizer, "masked_lm", max_length=48)
    LimeTrainer(model=model, args=train_args, train_dataset=dataset, data_collator=collator).train()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    splits = load_cldr_facts(LANGUAGES, seed=0)
    if args.mode == "sweep":
        model, tokenizer = build(args, args.step_sizes[0])
        if args.center:
            gather_centring_statistics(model, tokenizer, splits)
        for step in args.step_sizes:
            model.base_model.edit_lrs.fill_(step)
            start = time.time()
            print(json.dumps({"step_size": step, **evaluate(model, tokenizer, splits, args),
                              "seconds": round(time.time() - start)}), flush=True)  # fmt: skip
        return
    model, tokenizer = build(args, args.edit_lr_init)
    train(model, tokenizer, splits, args)
    learned = model.base_model.edit_lrs.log_lrs.detach().clone()
    print(json.dumps({"learned_step_sizes": learned.exp().tolist()}))
    for scale in args.scales:
        with torch.no_grad():
            model.base_model.edit_lrs.log_lrs.copy_(learned + math.log(scale))
        print(json.dumps({"scale": scale, **evaluate(model, tokenizer, splits, args)}), flush=True)


if __name__ == "__main__":
    main()
