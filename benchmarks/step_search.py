"""The step-size searches behind two baselines, on the validation split: a fair chance before the test split.

`--editor ft` (default): the tuned fine-tuning baseline (`ft_tuned` in reproduce.py). Fine-tuning edits the same layers
as the learned editors (the top three FFN blocks), one edit at a time, and stops as soon as the whole target is right.
The grid tries its optimiser, step size and step budget; the reference's FT (RMSprop 5e-6, up to 100 steps) is one
row.

`--editor ke`: the initial step size of hf_lime's own KnowledgeEditor (`ke-*` in reproduce.py; `edit_lr_init`).
Untrained, that editor is exactly one gradient step of that size (its scales start at 1, its shift at 0); training
adjusts the step size from there (in `ke-all-off` seed 0 it fell from 3e-2 to 4e-3–1.3e-2 in 300 steps), so the start
sets where the editor trains from; MEND's 3e-4 suits MEND's normalised factors, not a raw gradient, and leaves the
untrained KE missing 92 % of its edits. The grid tries the untrained editor at several sizes.

Each search runs on the **validation** split of the mLAMA task of reproduce.py (never the test split), with distinct
facts per editing language, and keeps the setting with the best harmonic mean of edit success and locality among those
whose reliability (the edit in its own language) is at least 0.9 (the best harmonic mean when none is).

    OMP_NUM_THREADS=1 python benchmarks/step_search.py --threads 1               # docs/results/ft_search.json
    OMP_NUM_THREADS=1 python benchmarks/step_search.py --editor ke --threads 1   # docs/results/ke_search.json

Evaluation: 5 facts per editing language (40 edits), 5 unrelated facts per edit, answers ranked among the relation's
objects, no bootstrap (a search, not a result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from peft import get_peft_model
from reproduce import MLAMA_LANGUAGES, RELATIONS, lime_config, load_task
from transformers import AutoTokenizer, set_seed

from hf_lime import LimeConfig
from hf_lime.evaluation import evaluate_editor

logger = logging.getLogger("step_search")
FT_GRID = [
    {"ft_optimizer": "rmsprop", "ft_lr": 5e-6, "ft_steps": 100},  # the reference's FT
    *({"ft_optimizer": "adam", "ft_lr": lr, "ft_steps": n} for lr in (1e-4, 3e-4, 1e-3, 3e-3) for n in (10, 40)),
    *({"ft_optimizer": "sgd", "ft_lr": lr, "ft_steps": 40} for lr in (1e-2, 1e-1)),
    # refined around the best of the first pass
    {"ft_optimizer": "adam", "ft_lr": 5e-4, "ft_steps": 10},
    *({"ft_optimizer": "sgd", "ft_lr": lr, "ft_steps": 40} for lr in (3e-3, 3e-2)),
]
KE_GRID = [{"edit_lr_init": lr} for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)]
GRIDS = {"ft": FT_GRID, "ke": KE_GRID}
SEARCHED = {"ft": "ft_tuned", "ke": "ke"}  # the reproduce.py editor whose settings each search chooses


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/reproduce", help="Where reproduce.py keeps its models.")
    p.add_argument("--editor", choices=sorted(GRIDS), default="ft", help="Whose step size to search.")
    p.add_argument("--output", default=None, help="Default: docs/results/<editor>_search.json.")
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--n_edits", type=int, default=5, help="Validation facts per editing language.")
    p.add_argument("--n_retain", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    # the task exactly as reproduce.py builds it (same data, split and base model)
    args.mlama_languages, args.relations, args.max_per_relation = MLAMA_LANGUAGES, RELATIONS, 150
    args.split_sizes, args.model_steps = [0.6, 0.1, 0.3], 2000
    args.output = args.output or f"docs/results/{args.editor}_search.json"
    return args


def editor_config(setting: dict, languages: list[str], args) -> LimeConfig:
    """The adapter of one grid row: the configuration reproduce.py runs (`ft_tuned`, or `ke` untrained without masks)
    with the row's settings in place of the chosen ones."""
    run = {"editor": SEARCHED[args.editor], "training": "untrained", "mask": "off"}
    return dataclasses.replace(lime_config(run, languages, args), **setting)


def evaluate_setting(setting: dict, task: dict, args) -> dict:
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(task["folder"])
    base = task["auto"].from_pretrained(task["folder"], attn_implementation="eager")
    config = editor_config(setting, task["languages"], args)
    model = get_peft_model(base, config).eval()
    start = time.time()
    result = evaluate_editor(
        model, tokenizer, task["splits"]["validation"], task["task"], languages=task["languages"],
        n_edits=args.n_edits, n_retain=args.n_retain, new_target=task["new_target"], scoring=task["scoring"],
        distinct_facts=True, seed=args.seed, max_length=64, progress=False,
    )  # fmt: skip
    metrics = {k: result.metrics[k] for k in ("reliability", "transfer", "edit_success", "locality", "hmean")}
    return {**setting, **metrics, "n_facts": result.settings["n_facts"], "seconds": round(time.time() - start, 1)}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_task("mlama", args)
    output = Path(args.output)
    rows = json.loads(output.read_text())["rows"] if output.exists() else []  # resumable
    grid = GRIDS[args.editor]
    done = [{k: r[k] for k in grid[0]} for r in rows]
    for setting in grid:
        if setting in done:
            continue
        rows.append(evaluate_setting(setting, task, args))
        logger.info("%s", rows[-1])
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"split": "validation", "editor": args.editor,
                                      "n_edits_per_language": args.n_edits, "rows": rows}, indent=2))  # fmt: skip
    best = choose(rows)
    keys = list(grid[0])
    print("| " + " | ".join(keys) + " | reliability | transfer | locality | hmean | s |")
    print("|" + " --- |" * (len(keys) + 5))
    for r in rows:
        mark = " **(chosen)**" if r is best else ""
        scores = " | ".join(f"{r[k]:.3f}" for k in ("reliability", "transfer", "locality", "hmean"))
        print(f"| {' | '.join(f'{r[k]:g}' if isinstance(r[k], float) else str(r[k]) for k in keys)} | {scores}{mark}"
              f" | {r['seconds']:.0f} |")  # fmt: skip
    print("chosen:", {k: best[k] for k in keys})


def choose(rows: list[dict]) -> dict:
    """The best harmonic mean among the rows with reliability >= 0.9, or over all rows when none has it."""
    eligible = [r for r in rows if r["reliability"] >= 0.9] or rows
    return max(eligible, key=lambda r: r["hmean"])


if __name__ == "__main__":
    main()
