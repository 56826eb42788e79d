"""Many edits at once (issue 29, item 3): do N edits of distinct facts hold together, across languages, and what do
they cost the other facts? For N = 1, 10, 100, 1000.

For each editor, each way of choosing the editing languages (`one`: every edit in `--edit_language`; `mix`: the
languages in turn) and each mode of `LimeEditor.edit_many` (`batch`: one editor call over all N requests, computed on
the unedited model; `sequential`: one edit after the other, each on the model holding the previous ones), the first N
facts of one fixed, shuffled pool are edited to another object of their relation, all N applied, and then:

- `reliability`: each edit's prompt in its editing language gives its new answer, read strictly: the argmax over the
  whole vocabulary at every answer token, as `EditGroup.held` reads it (`held` is the share of requests edit_many
  reports held; with `mix` reliability is the mean of the editing languages' shares instead);
- `transfer`: each edited fact's prompt in every other language gives that language's own name of the new answer;
- `locality_same_relation`: facts of the edited relations about subjects that are never edited keep the unedited
  model's answers (each read at as many masks as its gold answer has tokens, every token compared);
  `locality_other`: the same for facts of relations that are never edited (`--locality_relations`); `locality`
  pools both.

Reliability and transfer are `hf_lime.metrics.compute_xl_edit_metrics` over the edit records (means of the language
cells), with bootstrap intervals over the edited facts; each locality is the mean over its facts of the share of
languages whose answer is unchanged, with a bootstrap interval over those facts. The edit pool and the locality facts
are drawn once (by subject: no locality fact is about an edited subject), so the N = 10 edits are the first 10 of the
N = 100 edits and every N, editor and mode is read on the same locality facts.

Editors (`--editors`): `NAME=FOLDER` (or a bare `FOLDER`) for a saved editor, e.g. the LiME-MEND editor of `make demo`
(`outputs/demo`) or a MEND editor trained without masks (`examples/train_lime.py --no_lime`), and `ft_tuned`: the
fine-tuning baseline at the step size chosen on mLAMA's validation split (Adam 5e-4, 10 steps, no masks), built on
`--base_model` (default: the base model of the first saved editor).

Each (editor, setting, mode, N) appends one row to `--results` (`docs/results/many_edits.json`, a JSON list) and the
figure `--figure` (`docs/figures/many_edits.png`: every metric against N, per editor and mode) is redrawn from all
rows of that file (the latest row of each editor, setting, mode and N).

    OMP_NUM_THREADS=1 python benchmarks/many_edits.py --dataset cldr --split all \\
        --editors lime=outputs/demo ft_tuned --n 1 10 100
    python benchmarks/many_edits.py --dataset mlama --data_dir ../shared/data --split test \\
        --editors lime=outputs/reproduce/<run>/editor mend=outputs/reproduce/<run>/editor ft_tuned --device cuda

N larger than the edit pool is skipped with a message. Pool sizes with six languages (en fr de es ru zh) and the
defaults: CLDR test split 26 edits, all splits 218 (capital and official language edited, currency kept for
locality); mLAMA test split 323 (11 relations edited, P495 kept), so N = 1000 needs `--split all` (whose training
facts the editor has seen in its episodes, with other new answers).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FT_TUNED_NAME = "ft_tuned"
FT_TUNED = {"editor": "ft", "use_lime_mask": False, "ft_optimizer": "adam", "ft_lr": 5e-4, "ft_steps": 10}
DEFAULT_NS = (1, 10, 100, 1000)
MODES = ("batch", "sequential")
SETTINGS = ("one", "mix")
METRICS = ("reliability", "transfer", "locality_same_relation", "locality_other")
# mLAMA relations present in all eight default languages (as benchmarks/reproduce.py's RELATIONS)
MLAMA_RELATIONS = ["P17", "P19", "P20", "P27", "P36", "P37", "P106", "P138", "P176", "P364", "P407", "P495"]


# ------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editors", nargs="+", required=True, help="NAME=FOLDER, FOLDER or ft_tuned.")
    parser.add_argument("--base_model", default=None, help="ft_tuned's base model (default: the first editor's).")
    parser.add_argument("--languages", nargs="+", default=None, help="Default: the first saved editor's.")
    parser.add_argument("--dataset", default="cldr", choices=["cldr", "mlama", "items"])
    parser.add_argument("--items", default=None, help="--dataset items: a JSON list of items (the common schema).")
    parser.add_argument("--data_dir", default="../shared/data", help="mLAMA's folder.")
    parser.add_argument("--relations", nargs="+", default=None, help="Relations to load (mLAMA: 12 by default).")
    parser.add_argument("--max_per_relation", type=int, default=None, help="mLAMA: facts per relation at most.")
    parser.add_argument("--label_language", default=None, help="Default: the editor's training_info, else 'own'.")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test", "all"])
    parser.add_argument(
        "--locality_relations", nargs="+", default=None, help="Never edited: locality_other (default: the last)."
    )
    parser.add_argument("--n", nargs="+", type=int, default=list(DEFAULT_NS), dest="ns")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--edit_language", default=None, help="The language of `one` (default: the first).")
    parser.add_argument("--batch_size", type=int, default=None, help="edit_many's batch_size (bounds memory).")
    parser.add_argument(
        "--combine",
        default="sum",
        choices=["sum", "mean", "solve"],
        help="edit_many's combine (batch mode, MEND): 'mean' applies the mean of the requests' updates, 'solve' "
        "re-solves the output factors so that no request's tokens see another's update (hf_lime.tuner.merge); "
        "name the editor apart, e.g. lime_mean=FOLDER.",
    )
    parser.add_argument(
        "--preserve",
        type=int,
        default=0,
        help="combine='solve': preserve the keys of this many prompts (edit_many's `preserve`: the edits are then "
        "refitted layer by layer, hf_lime.tuner.refit), drawn from the loaded facts of every split that no row edits "
        "(the pool beyond the largest N) and no locality part reads; 0: none.",
    )
    parser.add_argument("--preserve_weight", type=float, default=None, help="edit_many's `preserve_weight`.")
    parser.add_argument("--n_locality", type=int, default=200, help="Facts per locality part at most.")
    parser.add_argument("--locality_share", type=float, default=0.25, help="Subjects kept for locality at most.")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--read_batch_size", type=int, default=64, help="Prompts per scoring forward.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", default=str(REPO / "docs" / "results" / "many_edits.json"))
    parser.add_argument("--figure", default=str(REPO / "docs" / "figures" / "many_edits.png"))
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.ns):
        parser.error(f"--n takes positive numbers, got {args.ns}.")
    return args


# ------------------------------------------------------------------------------------------------ editors
@dataclass
class EditorSpec:
    """An editor of the study: a saved editor's folder, or the tuned fine-tuning baseline (`folder=None`)."""

    name: str
    folder: str | None


def editor_specs(values: Sequence[str]) -> list[EditorSpec]:
    """`NAME=FOLDER`, `FOLDER` (named after the folder) or `ft_tuned`."""
    specs = []
    for value in values:
        if value == FT_TUNED_NAME:
            specs.append(EditorSpec(FT_TUNED_NAME, None))
            continue
        name, sep, folder = value.partition("=")
        folder = folder if sep else value
        specs.append(EditorSpec(name if sep else Path(folder).name, folder))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Editor names must differ, got {names}.")
    return specs


def load_editor(spec: EditorSpec, base_model: str | None, languages: Sequence[str], device: str):
    """The spec's `LimeEditor` on `device`, in evaluation mode."""
    from hf_lime import LimeConfig, LimeEditor

    if spec.folder is not None:
        editor = LimeEditor.from_pretrained(spec.folder, device=device)
    else:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        if base_model is None:
            raise ValueError("ft_tuned needs --base_model (or a saved editor before it in --editors).")
        base = AutoModelForMaskedLM.from_pretrained(base_model, attn_implementation="eager")
        config = LimeConfig(languages=list(languages), **FT_TUNED)
        editor = LimeEditor.from_base_model(base, config, AutoTokenizer.from_pretrained(base_model))
        editor.model.to(device)
    editor.model.eval()
    return editor


def first_saved_editor(specs: Sequence[EditorSpec]) -> dict[str, Any]:
    """The languages, base model and training info of the first saved editor (without loading a model)."""
    for spec in specs:
        if spec.folder is not None:
            folder = Path(spec.folder)
            config = json.loads((folder / "adapter_config.json").read_text())
            meta_file = folder / "lime_editor.json"
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            return {"languages": config["languages"], "base_model": config["base_model_name_or_path"],
                    "training_info": meta.get("training_info") or {}}  # fmt: skip
    return {}


# ------------------------------------------------------------------------------------------------ facts
@dataclass
class EditFact:
    """A fact to edit: the item and its new object's name in every language."""

    item: Any  # hf_lime.data.items.ParsedItem
    new_labels: dict[str, str]

    def prompt(self, language: str) -> str:
        return self.item.prompts[self.item.positions[language]]


@dataclass
class StudyFacts:
    """The edit pool (edit the first N) and the locality facts, drawn once."""

    edits: list[EditFact]
    same_relation: list[Any]
    other: list[Any]
    edit_relations: list[str]
    locality_relations: list[str]
    known: list[Any]  # every fact loaded (every split), the source of `--preserve`


def load_items(args: argparse.Namespace, languages: list[str], label_language: str) -> tuple[list, list]:
    """(the items of `--split`, every item loaded): the second names the new objects."""
    if args.dataset == "items":
        if not args.items:
            raise ValueError("--dataset items needs --items FILE (a JSON list of items in the common schema).")
        rows = json.loads(Path(args.items).read_text())
        return rows, rows
    if args.dataset == "cldr":
        from hf_lime.data import load_cldr_facts

        relations = args.relations or ("capital", "official_language", "currency")
        splits = load_cldr_facts(languages, relations=relations, seed=args.seed, label_language=label_language)
    else:
        from hf_lime.data import load_mlama

        splits = load_mlama(args.data_dir, languages, relations=args.relations or MLAMA_RELATIONS,
                            max_per_relation=args.max_per_relation, seed=args.seed,
                            label_language=label_language)  # fmt: skip
    every = [row for split in splits.values() for row in split]
    return (every if args.split == "all" else list(splits[args.split])), every


def complete_items(rows: Sequence[Any], languages: Sequence[str]) -> list:
    """The rows as parsed items, keeping those with a prompt and an answer in every language."""
    from hf_lime.data.items import parse_item

    items = [parse_item(row, set(languages)) for row in rows]
    return [item for item in items if len(item.gold_labels()) == len(languages) == len(item.positions)]


def new_objects(items: Sequence[Any], languages: Sequence[str]) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per relation, its objects named in every language (the candidates for new answers)."""
    from hf_lime.data.items import target_table

    table = target_table(items)
    return {rel: [(oid, names) for oid, names in objects if all(names.get(lang) for lang in languages)]
            for rel, objects in table.items()}  # fmt: skip


def _new_labels(item: Any, objects: list, rng: random.Random) -> dict[str, str] | None:
    """Another object of the item's relation, named differently from the gold answer in every language."""
    gold = item.gold_labels()
    options = [names for oid, names in objects if oid != item.target_id and all(names[k] != gold[k] for k in gold)]
    return dict(rng.choice(options)) if options else None


def plan_facts(
    rows: Sequence[Any],
    every_row: Sequence[Any],
    languages: Sequence[str],
    locality_relations: Sequence[str] | None,
    n_locality: int,
    seed: int,
    locality_share: float = 0.25,
) -> StudyFacts:
    """
    Draw the edit pool and the locality facts once: subjects are shuffled; the first subjects (at most
    `locality_share` of them) are kept for locality until they hold `n_locality` facts of the edited relations; every
    other subject's facts of the edited relations form the edit pool (shuffled, one prompt per fact in every
    language); locality on other relations reads facts of `locality_relations` whose subject has no fact in the edit
    pool.
    """
    rng = random.Random(seed)
    items = complete_items(rows, languages)
    relations = list(dict.fromkeys(item.relation for item in items))
    kept = list(locality_relations) if locality_relations else relations[-1:]
    edit_relations = [relation for relation in relations if relation not in kept]
    if not edit_relations:
        raise ValueError(f"No relation left to edit: {relations} are all locality relations.")
    subjects = sorted({item.group for item in items if item.relation in edit_relations})
    rng.shuffle(subjects)
    locality_subjects, same = set(), []
    for subject in subjects[: int(locality_share * len(subjects))]:
        if len(same) >= n_locality:
            break
        locality_subjects.add(subject)
        same += [item for item in items if item.group == subject and item.relation in edit_relations]
    known = complete_items(every_row, languages)
    edits = _edit_pool(items, edit_relations, locality_subjects, new_objects(known, languages), rng)
    edited_subjects = {fact.item.group for fact in edits}
    other = [item for item in items if item.relation in kept and item.group not in edited_subjects]
    rng.shuffle(other)
    return StudyFacts(edits, same[:n_locality], other[:n_locality], edit_relations, kept, known)


def _edit_pool(items: list, edit_relations: list[str], excluded: set[str], objects: dict, rng: random.Random) -> list:
    """The shuffled edit facts: not about `excluded` subjects, each with a new object, no prompt seen twice."""
    candidates = [item for item in items if item.relation in edit_relations and item.group not in excluded]
    rng.shuffle(candidates)
    pool, seen = [], set()
    for item in candidates:
        new = _new_labels(item, objects.get(item.relation, []), rng)
        if new is None or seen & set(item.prompts):
            continue
        seen |= set(item.prompts)
        pool.append(EditFact(item, new))
    return pool


def preserve_facts(facts: StudyFacts, languages: Sequence[str], max_n: int, limit: int, seed: int) -> list:
    """At most `limit` `(prompt, gold answer)` pairs, in every language, of the loaded facts (every split) that no
    row edits (the first `max_n` of the pool) and no locality part reads; shuffled."""
    used = {prompt for fact in facts.edits[:max_n] for prompt in fact.item.prompts}
    used |= {prompt for item in facts.same_relation + facts.other for prompt in item.prompts}
    items = [item for item in facts.known if not used & set(item.prompts)]
    pairs = [(item.prompts[item.positions[lang]], item.gold_labels()[lang]) for item in items for lang in languages]
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def edit_languages(n: int, setting: str, languages: Sequence[str], edit_language: str) -> list[str]:
    """The editing language of each of the first `n` facts: all `edit_language` (`one`) or in turn (`mix`)."""
    return [edit_language] * n if setting == "one" else [languages[i % len(languages)] for i in range(n)]


# ------------------------------------------------------------------------------------------------ readings
def bootstrap_mean(values: Sequence[float], resamples: int, seed: int, confidence: float = 0.95) -> tuple:
    """The mean of `values` and a percentile bootstrap interval over them (`[nan, nan]` without resamples)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), [float("nan"), float("nan")]
    if resamples < 1:
        return float(data.mean()), [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(data.mean()), [float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))]


def gold_queries(items: Sequence[Any], languages: Sequence[str]) -> list[tuple[Any, str, str]]:
    """Every item in every language, read against its gold answer (for the number of masks)."""
    return [(item, lang, item.targets[item.positions[lang]]) for item in items for lang in languages]


def unchanged_shares(after: Sequence[str], before: Sequence[str], n_languages: int) -> list[float]:
    """Per fact (its `n_languages` consecutive readings), the share of languages whose answer did not change."""
    same = [a == b for a, b in zip(after, before, strict=True)]
    return [sum(same[i : i + n_languages]) / n_languages for i in range(0, len(same), n_languages)]


def edit_metrics(scorer: Any, facts: Sequence[EditFact], langs: Sequence[str], languages: Sequence[str],
                 bootstrap: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Reliability and transfer of the applied edits (`compute_xl_edit_metrics`, intervals over facts)."""
    from hf_lime.metrics import compute_xl_edit_metrics

    queries = [(fact.item, lang, fact.new_labels[lang]) for fact in facts for lang in languages]
    records = {
        "predictions": scorer.predict(queries),
        "references": [scorer.reference(*query) for query in queries],
        "edit_ids": [fact.item.id for fact in facts for _ in languages],
        "edit_languages": [lang for lang in langs for _ in languages],
        "eval_languages": [lang for _ in facts for lang in languages],
        "kinds": ["edit"] * len(queries),
    }
    result = compute_xl_edit_metrics(**records, bootstrap=bootstrap, seed=seed, group_ids=records["edit_ids"])
    ci = result.get("ci", {})
    return {"reliability": result["reliability"], "reliability_ci": ci.get("reliability"),
            "transfer": result["transfer"], "transfer_ci": ci.get("transfer"),
            "es_by_language": result["es_by_language"]}  # fmt: skip


def locality_metrics(scorer: Any, facts: StudyFacts, base: dict[str, list[str]], languages: Sequence[str],
                     bootstrap: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """The locality parts: per fact the share of languages keeping the unedited model's answer, then the mean."""
    row, shares = {}, []
    for name, items in (("locality_same_relation", facts.same_relation), ("locality_other", facts.other)):
        part = unchanged_shares(scorer.predict(gold_queries(items, languages)), base[name], len(languages))
        row[name], row[f"{name}_ci"] = bootstrap_mean(part, bootstrap, seed)
        shares += part
    row["locality"], row["locality_ci"] = bootstrap_mean(shares, bootstrap, seed)
    return row


def base_answers(scorer: Any, facts: StudyFacts, languages: Sequence[str]) -> dict[str, list[str]]:
    """The unedited model's answers to the locality facts (the references of locality)."""
    return {"locality_same_relation": scorer.predict(gold_queries(facts.same_relation, languages)),
            "locality_other": scorer.predict(gold_queries(facts.other, languages))}  # fmt: skip


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class RunPlan:
    """One (setting, mode, N) of an editor."""

    setting: str
    mode: str
    n: int


def run_one(editor: Any, scorer: Any, facts: StudyFacts, base: dict, plan: RunPlan, args: argparse.Namespace,
            languages: list[str], moments: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """Apply the first `plan.n` edits with `edit_many`, read every metric, revert; the row's measured fields."""
    chosen = facts.edits[: plan.n]
    langs = edit_languages(plan.n, plan.setting, languages, args.edit_language)
    requests = [(fact.prompt(lang), fact.new_labels[lang], lang) for fact, lang in zip(chosen, langs, strict=True)]
    start = time.perf_counter()
    combine = used_combine(args.combine, plan.mode)
    preserve = {"preserve": moments, "preserve_weight": args.preserve_weight} if moments else {}
    group = editor.edit_many(requests, mode=plan.mode, batch_size=args.batch_size, max_length=args.max_length,
                             combine=combine, **preserve)  # fmt: skip
    edit_seconds = time.perf_counter() - start
    try:
        row = edit_metrics(scorer, chosen, langs, languages, args.bootstrap, args.seed)
        row.update(locality_metrics(scorer, facts, base, languages, args.bootstrap, args.seed))
    finally:
        group.revert()
    row["held"] = sum(group.held) / len(group.held)
    row.update(seconds_edit=round(edit_seconds, 3), seconds_total=round(time.perf_counter() - start, 3))
    return row


def describe(spec: EditorSpec, editor: Any, plan: RunPlan, args: argparse.Namespace, facts: StudyFacts,
             commit: str) -> dict[str, Any]:  # fmt: skip
    """The row's settings: which editor, data, mode, N, languages, sizes, code."""
    config = editor.config
    return {
        "editor": spec.name, "editor_path": spec.folder, "editor_type": config.editor,
        "use_lime_mask": bool(config.use_lime_mask), "trained_edit_batch_size": editor.trained_edit_batch_size,
        "ft_settings": FT_TUNED if spec.folder is None else None, "mode": plan.mode, "n": plan.n,
        "setting": plan.setting, "edit_language": args.edit_language if plan.setting == "one" else "mix",
        "batch_size": args.batch_size, "combine": used_combine(args.combine, plan.mode),
        "preserve": args.preserve, "preserve_weight": preserve_weight(args) if args.preserve else None,
        "dataset": args.dataset, "split": args.split,
        "languages": list(editor.languages), "edit_relations": facts.edit_relations,
        "locality_relations": facts.locality_relations, "n_locality_same_relation": len(facts.same_relation),
        "n_locality_other": len(facts.other), "reading": "strict (argmax over the vocabulary, every answer token)",
        "bootstrap": args.bootstrap, "seed": args.seed, "device": str(editor.device), "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip


def run_editor(spec: EditorSpec, editor: Any, facts: StudyFacts, args: argparse.Namespace, languages: list[str],
               commit: str) -> list[dict[str, Any]]:  # fmt: skip
    """Every (setting, mode, N) of one editor; the rows."""
    from hf_lime.evaluation.scoring import TargetScorer

    scorer = TargetScorer(editor.model, editor.tokenizer, "masked_lm", None, args.max_length, args.read_batch_size)
    base = base_answers(scorer, facts, languages)
    moments = None
    if args.preserve:
        pairs = preserve_facts(facts, languages, max(args.ns), args.preserve, args.seed)
        moments = editor.key_moments(pairs, max_length=args.max_length)
        print(f"preserving the keys of {len(pairs)} prompts", file=sys.stderr)
    rows = []
    for setting in args.settings:
        for mode in args.modes:
            for n in sorted(args.ns):
                if n > len(facts.edits):
                    print(f"skipped N={n}: the edit pool holds {len(facts.edits)} facts", file=sys.stderr)
                    continue
                plan = RunPlan(setting, mode, n)
                row = {**describe(spec, editor, plan, args, facts, commit),
                       **run_one(editor, scorer, facts, base, plan, args, languages, moments)}  # fmt: skip
                print(summary_line(row), flush=True)
                append_rows(args.results, [row])  # at once: a long study keeps what it measured
                rows.append(row)
    return rows


def preserve_weight(args: argparse.Namespace) -> float:
    from hf_lime.tuner.refit import DEFAULT_REFIT_WEIGHT

    return DEFAULT_REFIT_WEIGHT if args.preserve_weight is None else args.preserve_weight


def summary_line(row: dict[str, Any]) -> str:
    parts = [f"{name} {row[name]:.3f}" for name in (*METRICS, "held")]
    return f"{row['editor']:<12} {row['setting']:<4} {row['mode']:<10} N={row['n']:<5} " + "  ".join(parts)


# ------------------------------------------------------------------------------------------------ output
def git_commit() -> str:
    """HEAD, with `-dirty` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    return f"{head}-dirty" if head and dirty else head or "unknown"


def append_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append `rows` to the JSON list at `path` (created if needed, replaced atomically); all the rows."""
    from hf_lime.evaluation import json_safe

    path = Path(path)
    every = json.loads(path.read_text()) if path.is_file() else []
    if not isinstance(every, list):
        raise ValueError(f"{path} does not hold a JSON list.")
    every += [json_safe(row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(every, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return every


def used_combine(combine: str, mode: str) -> str:
    """`--combine` as `edit_many` takes it in `mode`: `"mean"` is for batches only (sequential edits are summed)."""
    return "sum" if combine == "mean" and mode != "batch" else combine


def latest_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each (dataset, setting, editor, mode, N) among the study's rows."""
    latest = {}
    for row in rows:
        if all(key in row for key in ("editor", "mode", "n", "setting")):
            latest[(row.get("dataset"), row["setting"], row["editor"], row["mode"], row["n"])] = row
    return list(latest.values())


def plot_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Every metric against N (log scale): a row of panels per (dataset, setting), a colour per editor, a line
    style per mode, bars for the bootstrap intervals."""
    from matplotlib.figure import Figure

    rows = latest_rows(rows)
    panels = sorted({(row.get("dataset"), row["setting"]) for row in rows}, key=lambda p: (str(p[0]), p[1] != "one"))
    ns = sorted({row["n"] for row in rows})
    editors = sorted({row["editor"] for row in rows})
    figure = Figure(figsize=(4.2 * len(METRICS), 3.2 * max(len(panels), 1)), layout="constrained")
    axes = figure.subplots(max(len(panels), 1), len(METRICS), squeeze=False)
    for (dataset, setting), line in zip(panels, axes, strict=False):
        for metric, ax in zip(METRICS, line, strict=True):
            for index, editor in enumerate(editors):
                for mode, style in zip(MODES, ("-", "--"), strict=True):
                    _plot_line(ax, rows, (dataset, setting, editor, mode), metric, f"C{index}", style)
            ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="N edits applied together",
                   title=f"{metric} ({dataset}, {setting})")  # fmt: skip
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _plot_line(ax: Any, rows: Sequence[dict], key: tuple, metric: str, color: str, style: str) -> None:
    dataset, setting, editor, mode = key
    chosen = sorted((row for row in rows if (row.get("dataset"), row["setting"], row["editor"], row["mode"]) == key),
                    key=lambda row: row["n"])  # fmt: skip
    points = [(row["n"], row[metric], row.get(f"{metric}_ci")) for row in chosen if _finite(row.get(metric))]
    if not points:
        return
    ns, values = [p[0] for p in points], [p[1] for p in points]
    low = [v - (ci[0] if ci and _finite(ci[0]) else v) for _, v, ci in points]
    high = [(ci[1] if ci and _finite(ci[1]) else v) - v for _, v, ci in points]
    ax.errorbar(ns, values, yerr=[low, high], color=color, linestyle=style, marker="o", capsize=3,
                label=f"{editor} ({mode})")  # fmt: skip


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the study; the rows it appended."""
    args = parse_args(argv)
    specs = editor_specs(args.editors)
    first = first_saved_editor(specs)
    languages = list(args.languages or first.get("languages") or [])
    if not languages:
        raise ValueError("Pass --languages (no saved editor to take them from).")
    args.edit_language = args.edit_language or languages[0]
    label_language = args.label_language or first.get("training_info", {}).get("label_language") or "own"
    rows, every = load_items(args, languages, label_language)
    facts = plan_facts(
        rows, every, languages, args.locality_relations, args.n_locality, args.seed, args.locality_share
    )
    print(f"{len(facts.edits)} facts to edit ({facts.edit_relations}), locality: {len(facts.same_relation)} "
          f"same-relation and {len(facts.other)} other-relation facts ({facts.locality_relations})")  # fmt: skip
    commit, written = git_commit(), []  # each row is appended to --results as soon as it is measured
    for spec in specs:
        editor = load_editor(spec, args.base_model or first.get("base_model"), languages, args.device)
        if list(editor.languages) != languages:
            raise ValueError(f"Editor {spec.name!r} knows {editor.languages}, the study reads {languages}.")
        written += run_editor(spec, editor, facts, args, languages, commit)
        del editor
        gc.collect()
    plot_rows(json.loads(Path(args.results).read_text()), args.figure)
    return written


if __name__ == "__main__":
    main()
