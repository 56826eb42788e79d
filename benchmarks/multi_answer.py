"""One fact, its answer given in every language's words (issue 27, item 3's product feature), against the same fact
edited with the editing language's answer alone — paired over the same facts, each edited alone and reverted.

For each of the first `--n_facts` facts of `benchmarks/many_edits.py`'s edit pool (distinct facts of the edited
relations, a new object named in every language) and each editing language (`--edit_languages`, default: all):

- `editing`: `editor.edit(prompt, answer, language=e)` — the usual edit; its other-language cells are *transfer*;
- `every`: `editor.edit(prompt, {lang: answer in lang's words for every lang}, language=e, combine="sum")` — one
  batched edit of the editing-language prompt with the answer as each language names it. Its other-language cells
  are **not transfer** (the answer was given): they are reported as `given_answer` and never mixed with transfer;
- `every_prompt`: `editor.edit({lang: prompt in lang}, {lang: answer in lang}, combine="sum")` — the fact edited in
  every language at once (each row in its own language): what a user with the fact in every language gets; MEND's
  batched edit sums the rows' updates, so one fact in six languages takes six steps;
- `every_prompt_mean`: the same with `combine="mean"` (the rows share one step: `LimeEditor.edit`'s default for a
  MEND edit given per language, chosen on this reading).

Read strictly (argmax over the whole vocabulary at every answer token, each language's own names), with locality on
`--n_locality` facts of the edited relations about subjects never edited (the share of languages whose answer is
unchanged). Means with bootstrap intervals over facts, and each variant minus `editing`, paired over facts.

    OMP_NUM_THREADS=1 python benchmarks/multi_answer.py --editor outputs/demo --n_facts 58 \\
        --json docs/results/multi_answer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from many_edits import (  # noqa: E402
    EditFact,
    bootstrap_mean,
    gold_queries,
    load_items,
    plan_facts,
    unchanged_shares,
)

VARIANTS = ("editing", "every", "every_prompt", "every_prompt_mean")
ONE_PROMPT_VARIANTS = ("editing", "every")  # the edit depends on the editing language (its prompt)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="outputs/demo", help="A saved editor's folder.")
    parser.add_argument("--dataset", default="cldr", choices=["cldr", "mlama", "items"])
    parser.add_argument("--items", default=None, help="--dataset items: a JSON list of items (the common schema).")
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--relations", nargs="+", default=None)
    parser.add_argument("--max_per_relation", type=int, default=None)
    parser.add_argument("--split", default="test", choices=["train", "validation", "test", "all"])
    parser.add_argument("--locality_relations", nargs="+", default=None)
    parser.add_argument("--n_facts", type=int, default=50, help="Facts edited (each alone), at most.")
    parser.add_argument("--edit_languages", nargs="+", default=None, help="Default: every language of the editor.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--n_locality", type=int, default=30, help="Same-relation locality facts.")
    parser.add_argument("--locality_share", type=float, default=0.25)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--read_batch_size", type=int, default=64)
    parser.add_argument("--json", default=None, help="Write the report here.")
    args = parser.parse_args(argv)
    if "editing" not in args.variants:
        parser.error("--variants must include 'editing' (the others are read against it).")
    return args


def edit_call(variant: str, fact: EditFact, language: str, languages: Sequence[str]) -> tuple[tuple, dict]:
    """The `editor.edit` arguments of one variant."""
    answers = {lang: fact.new_labels[lang] for lang in languages}
    if variant == "editing":
        return (fact.prompt(language), fact.new_labels[language]), {"language": language}
    if variant == "every":
        return (fact.prompt(language), answers), {"language": language, "combine": "sum"}
    combine = "mean" if variant == "every_prompt_mean" else "sum"
    return ({lang: fact.prompt(lang) for lang in languages}, answers), {"combine": combine}


def read_fact(scorer: Any, fact: EditFact, languages: Sequence[str]) -> list[bool]:
    """Whether each language's prompt gives that language's name of the new answer (strict)."""
    queries = [(fact.item, lang, fact.new_labels[lang]) for lang in languages]
    return [p == scorer.reference(*q) for p, q in zip(scorer.predict(queries), queries, strict=True)]


def run_variant(editor: Any, scorer: Any, facts: list[EditFact], locality: list, base: list[str], variant: str,
                edit_languages: Sequence[str], languages: Sequence[str]) -> dict[str, list[float]]:  # fmt: skip
    """Per (fact, editing language): the editing language's cell, the other languages' mean, locality."""
    own, others, kept = [], [], []
    for fact in facts:
        readings: dict[str | None, tuple] = {}  # the prompt-dict variants make one edit whatever the editing language
        for language in edit_languages:
            key = language if variant in ONE_PROMPT_VARIANTS else None
            if key not in readings:
                args, kwargs = edit_call(variant, fact, language, languages)
                with editor.edit(*args, **kwargs):
                    after = scorer.predict(gold_queries(locality, languages))
                    readings[key] = read_fact(scorer, fact, languages), after
            hits, after = readings[key]
            own.append(float(hits[languages.index(language)]))
            others.append(float(np.mean([h for lang, h in zip(languages, hits, strict=True) if lang != language])))
            kept.append(float(np.mean(unchanged_shares(after, base, len(languages)))))
    return {"reliability": own, "other_languages": others, "locality_same_relation": kept}


def per_fact(values: Sequence[float], rows_per_fact: int) -> list[float]:
    """The mean of each fact's consecutive rows (one per editing language): what the intervals resample."""
    return [float(np.mean(values[i : i + rows_per_fact])) for i in range(0, len(values), rows_per_fact)]


def metric_name(metric: str, variant: str) -> str:
    """`other_languages` is transfer for `editing` only; given the answer, it is `given_answer`."""
    if metric != "other_languages":
        return metric
    return "transfer" if variant == "editing" else "given_answer"


def report(per_variant: dict[str, dict[str, list[float]]], rows_per_fact: int, args: argparse.Namespace,
           meta: dict) -> dict:  # fmt: skip
    """Each variant's means with intervals over facts, and its paired difference from `editing`."""
    out: dict[str, Any] = {**meta, "variants": {}}
    for variant, columns in per_variant.items():
        entry = {}
        for metric, values in columns.items():
            name, facts = metric_name(metric, variant), per_fact(values, rows_per_fact)
            entry[name], entry[f"{name}_ci"] = bootstrap_mean(facts, args.bootstrap, args.seed)
            if variant != "editing":
                reference = per_fact(per_variant["editing"][metric], rows_per_fact)
                diff = [a - b for a, b in zip(facts, reference, strict=True)]
                entry[f"{name}_minus_editing"], entry[f"{name}_minus_editing_ci"] = bootstrap_mean(
                    diff, args.bootstrap, args.seed
                )
        out["variants"][variant] = entry
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    from hf_lime import LimeEditor
    from hf_lime.evaluation import json_safe
    from hf_lime.evaluation.scoring import TargetScorer

    args = parse_args(argv)
    editor = LimeEditor.from_pretrained(args.editor)
    editor.model.eval()
    languages = list(editor.languages)
    label_language = (editor.training_info or {}).get("label_language", "own")
    rows, every = load_items(args, languages, label_language)
    facts = plan_facts(rows, every, languages, args.locality_relations, args.n_locality, args.seed,
                       args.locality_share)  # fmt: skip
    chosen = facts.edits[: args.n_facts]
    edit_languages = list(args.edit_languages or languages)
    scorer = TargetScorer(editor.model, editor.tokenizer, "masked_lm", None, args.max_length, args.read_batch_size)
    base = scorer.predict(gold_queries(facts.same_relation, languages))
    per_variant, seconds = {}, {}
    variants = [v for v in args.variants if v != "every_prompt_mean" or editor.config.editor == "mend"]
    if variants != args.variants:
        print(f"every_prompt_mean skipped: combine='mean' is for MEND, this editor is {editor.config.editor!r}")
    for variant in variants:
        start = time.time()
        per_variant[variant] = run_variant(editor, scorer, chosen, facts.same_relation, base, variant,
                                           edit_languages, languages)  # fmt: skip
        seconds[variant] = round(time.time() - start, 1)
    meta = {"editor": args.editor, "dataset": args.dataset, "split": args.split, "languages": languages,
            "edit_languages": edit_languages, "n_facts": len(chosen), "n_edits": len(chosen) * len(edit_languages),
            "n_locality_same_relation": len(facts.same_relation), "label_language": label_language,
            "reading": "strict (argmax over the vocabulary, every answer token; each language's own names)",
            "intervals": "bootstrap over facts (each fact's editing languages together)",
            "seconds": seconds}  # fmt: skip
    result = json_safe(report(per_variant, len(edit_languages), args, meta))
    print(json.dumps(result["variants"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    main()
