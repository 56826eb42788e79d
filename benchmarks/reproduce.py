"""Reproduction study: do the LiME paper's claims hold with a real multilingual model on real parallel data?

Every run trains (or not) one editor configuration and evaluates it on the same edits as every other configuration of
its seed, so runs pair. A configuration is `<editor>-<training>-<mask>`:

- editors `mend`, `ke` (hf_lime's KnowledgeEditor), `ke_ref` (the LiME reference's: `ke_conditioner="lstm"`; all
  trained) and the fine-tuning baselines `ft_reference` (RMSprop 5e-6, up to 100 steps, stop
  when the target is right: the LiME reference code's FT), `ft_tuned` (Adam, the step size and step count found by
  the search in docs/results.md) and `ft_loc` (`ft_tuned` plus the locality term on retain inputs);
- training `all` (all → all episodes), `monolingual` (en → en), `untrained` (FT) or `twin` (the control of what
  training the networks bought: MEND's networks at their initial weights, as the `all` run of the same mask and seed
  started, with that run's trained step sizes, masks and centring statistics; `mend-twin-language` pairs with
  `mend-all-language`);
- mask `off`, `language` (LiME: one mask row per language) or `shared` (one row for every language: the control).

Each run writes `<runs_dir>/<dataset>-<config>-seed<seed>.json` (small, committed: dataset, editor, training, mask,
seed, episodes, n_facts, metrics with grouped intervals, commit) and its records, gzipped, beside it (for paired
comparisons). Finished runs are skipped and an interrupted training resumes from its last checkpoint (under
`--output_dir`), so the grid is resumable across sessions. `--summary_only` writes
`summary.md` from the run files: per-configuration tables (mean ± std over seeds) and the paired differences behind the
paper's claims, each with its grouped interval.

    # item 6 of the editors issue: LiME-MEND all -> all and the monolingual editor, paired, on mLAMA
    python benchmarks/reproduce.py --configs mend-all-language mend-monolingual-off --seeds 0
    python benchmarks/reproduce.py --summary_only
    # any two finished runs on the same edits, paired per seed and pooled (a variant against the default recipe, say)
    python benchmarks/reproduce.py --compare 'mlama-mend-monolingual-off-seed{seed}' \
        'mlama-mend-all-language-seed{seed}-cedit0.1' --seeds 0 1 2

Protocols: `--datasets mlama` fills each language's template with that language's labels; `mlama_untranslated` is
the LiME reference's protocol (translated templates, the first language's subject and object labels everywhere; its
own fact model). `--locality sequence` reads locality as the reference does on mLAMA: the retain prompt's object slot
filled with a span of masks of random length, every position's prediction compared (run ids end in `-seqloc`; a
trained editor is taken from the best checkpoint of the same configuration's target-protocol run when it is there).

Evaluation (`--reading strict`, the default; run ids end in `-strict`): `distinct_facts=True` (each editing language
edits its own facts, `n_edits` per language), answers read over the whole vocabulary (`scoring="open"`, every token
right) with ranking among every object of the relation (mLAMA's candidate lists) as a second reading
(`metrics_by_reading.candidates`), locality in parts: `n_neighbours` facts of the edited relation about other subjects
(`locality_same_relation`), `n_retain` facts of other relations read at their answer (`locality_other`) and over the
whole prompt (`locality_sequence`); each language's own names (`label_language="own"`), and on mLAMA the same edits
again under the reference's `"editing"` names (`editing`: the editing language's names in every template), 1000
grouped bootstrap resamples. `--reading lenient` is the earlier protocol (ranking among the test split's objects,
retain items of any relation; ids without a suffix), kept to re-read old runs. The base model (`me5-small-facts`)
learns every fact of the loaded mLAMA subset first (`fact_split="all"`): it knows the facts an editor is asked to
change, as a pretrained LM would. Each run's trained editor stays under `--output_dir` (`editor_dir` in its run file),
so a later reading needs no retraining.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import logging
import re
import subprocess
import time
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_lime import LimeConfig
from hf_lime.data import load_mlama, load_mlama_candidates, load_xnli
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.evaluation import evaluate_editing_protocol, evaluate_editor
from hf_lime.evaluation.edit_options import preserve_edit_options
from hf_lime.real_models.prepare import prepare_model
from hf_lime.tasks import model_label2id
from hf_lime.trainer import LimeTrainer, LimeTrainingArguments
from hf_lime.trainer.curves import plot_training_curves

logger = logging.getLogger("reproduce")
REPO = Path(__file__).resolve().parents[1]
MLAMA_LANGUAGES = ["en", "fr", "de", "es", "ru", "zh", "ar", "ja"]
XNLI_LANGUAGES = ["en", "fr", "de", "es", "ru", "zh", "ar", "hi"]
# Relations present in all eight default languages of the mLAMA release (P30, P103, P140 are missing in some).
RELATIONS = ["P17", "P19", "P20", "P27", "P36", "P37", "P106", "P138", "P176", "P364", "P407", "P495"]
# `mlama_disjoint`: the base fact model learns these other relations (also in all eight languages) and never a fact
# the editor trains or is tested on.
BASE_RELATIONS = ["P31", "P131", "P159", "P276", "P279", "P361", "P463", "P47", "P1001", "P101", "P127", "P937"]
# ft_tuned: the best hmean with reliability >= 0.9 in benchmarks/step_search.py (validation split; ft_search.json)
FT_SETTINGS = {
    "ft_reference": {"ft_optimizer": "rmsprop", "ft_lr": 5e-6, "ft_steps": 100},
    "ft_tuned": {"ft_optimizer": "adam", "ft_lr": 5e-4, "ft_steps": 10},
    "ft_loc": {"ft_optimizer": "adam", "ft_lr": 5e-4, "ft_steps": 10, "ft_loc_coef": 1.0},
}
# hf_lime's own KE starts from one raw gradient step of this size: the best hmean with reliability >= 0.9 of the
# untrained editor in `step_search.py --editor ke` (validation split; ke_search.json). MEND's normalised factors take
# --edit_lr_init (3e-4); the reference's KE its own 1.0.
KE_EDIT_LR_INIT = 3e-2
SEQUENCE_SUFFIX = "-seqloc"  # run ids of `--locality sequence`
STRICT_SUFFIX = "-strict"  # run ids of `--reading strict`
CHOSEN_ON = {  # the split each choice behind a run's figures was made on (written into its settings)
    "editor checkpoint": "validation (the best hmean of the validation episodes)",
    "recipe (rates, c_edit, edit_lr_init, steps), FT step sizes": "validation (step_search.py) and fixed defaults; "
    "c_edit 0.1 was tried after a test run (docs/results.md)",
    "evaluation sizes and readings": "fixed before the run",
}
TRAININGS = ("all", "monolingual", "untrained", "twin")
DEFAULT_CONFIGS = [
    *(f"mend-{t}-{m}" for t in ("monolingual", "all") for m in ("off", "language", "shared")),
    *(f"{ke}-{t}-{m}" for ke in ("ke", "ke_ref") for t in ("monolingual", "all") for m in ("off", "language")),
    *(f"{ft}-untrained-off" for ft in FT_SETTINGS),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/reproduce", help="Models, checkpoints, reports (not committed).")
    p.add_argument("--runs_dir", default="docs/results/runs", help="Where the run files go (committed).")
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--datasets", nargs="+", default=["mlama"],
                   choices=["mlama", "mlama_untranslated", "mlama_disjoint", "xnli"],
                   help="mlama_untranslated: the LiME reference's protocol (translated templates, the first "
                        "language's subject and object labels in every language). mlama_disjoint: the base fact "
                        "model learns other relations (BASE_RELATIONS), none of the editor's facts.")  # fmt: skip
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max_steps", type=int, default=2000, help="Editor optimizer steps at most (early stopping).")
    p.add_argument("--eval_steps", type=int, default=100, help="Validate (and checkpoint) every this many steps.")
    p.add_argument("--patience", type=int, default=4, help="Validations without improvement before stopping.")
    p.add_argument("--learning_rate", type=float, default=1e-5)
    p.add_argument("--edit_lr_init", type=float, default=3e-4, help="MEND's initial step size (KE: KE_EDIT_LR_INIT).")
    p.add_argument("--c_edit", type=float, default=1.0)
    p.add_argument("--model_steps", type=int, default=2000, help="Steps of the base fact model.")
    p.add_argument("--mlama_languages", nargs="+", default=MLAMA_LANGUAGES)
    p.add_argument("--xnli_languages", nargs="+", default=XNLI_LANGUAGES)
    p.add_argument("--relations", nargs="+", default=RELATIONS)
    p.add_argument("--max_per_relation", type=int, default=150)
    p.add_argument("--split_sizes", nargs=3, type=float, default=[0.6, 0.1, 0.3],
                   help="Train / validation / test shares of the subjects (the test split must hold n_edits distinct "
                        "facts per editing language).")  # fmt: skip
    p.add_argument("--xnli_split_sizes", nargs=3, type=float, default=[0.6, 0.05, 0.35],
                   help="Train / validation / test shares of the XNLI premises, for the classifier and the editor "
                        "alike (the test share must hold n_edits items the classifier gets wrong per editing "
                        "language, each language its own items: 0.35 holds ~700 parallel items for ~200 "
                        "edits).")  # fmt: skip
    p.add_argument("--n_edits", type=int, default=25, help="Test edits (distinct facts) per editing language.")
    p.add_argument("--n_retain", type=int, default=5)
    p.add_argument(
        "--n_neighbours",
        type=int,
        default=5,
        help="Facts of the edited relation about other subjects scored per edit (mLAMA; XNLI has none).",
    )
    p.add_argument("--reading", choices=["strict", "lenient"], default="strict",
                   help="strict: whole-vocabulary answers, locality in parts, own and editing names (ids end in "
                        "'-strict'); lenient: the earlier protocol.")  # fmt: skip
    p.add_argument("--locality", choices=["target", "sequence"], default="target",
                   help="How retain items are read: at their target, or over the whole sequence with a random-length "
                        "mask span (the LiME reference's protocol; run ids get '-seqloc' and a trained editor is "
                        "reused from the target run's best checkpoint when present).")  # fmt: skip
    p.add_argument("--preserve_weight", type=float, default=None,
                   help="Read the editor of the run without --variant (trained, not retrained) with every edit "
                        "fitted against the key moments of the training split's facts at this weight (edit_many's "
                        "`preserve`, hf_lime.tuner.merge.preserve_merge); needs --variant.")  # fmt: skip
    p.add_argument("--variant", default=None,
                   help="Name of a recipe variant (e.g. 'cedit0.1' with --c_edit 0.1): appended to the run ids "
                        "('-<variant>') and kept apart from the default recipe's rows in the summary.")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--summary_only", action="store_true", help="Only write the summary from the finished runs.")
    p.add_argument("--compare", nargs=2, metavar=("BASELINE", "CANDIDATE"), default=None,
                   help="Print the paired differences of two finished runs (ids; '{seed}' is replaced by each of "
                        "--seeds, and the seeds are pooled), e.g. mlama-mend-monolingual-off-seed{seed} "
                        "mlama-mend-all-language-seed{seed}.")  # fmt: skip
    p.add_argument(
        "--prepare_only",
        action="store_true",
        help="Only build the datasets' base models (and their precision@1 on the editor's test facts).",
    )
    return p.parse_args()


def load_task(dataset: str, args) -> dict:
    """Base model folder, tokenizer, splits and evaluation mode of one dataset (models are built once, cached)."""
    models = Path(args.output_dir) / "models"
    if dataset.startswith("mlama"):
        languages = list(args.mlama_languages)
        label_language = languages[0] if dataset == "mlama_untranslated" else None  # the reference's protocol
        splits = load_mlama(args.data_dir, languages, relations=args.relations, label_language=label_language,
                            max_per_relation=args.max_per_relation, split_sizes=args.split_sizes, seed=0)  # fmt: skip
        base_facts = splits
        if dataset == "mlama_disjoint":  # the base model's facts: other relations, none the editor sees
            base_facts = load_mlama(
                args.data_dir,
                languages,
                relations=BASE_RELATIONS,
                max_per_relation=args.max_per_relation,
                split_sizes=args.split_sizes,
                seed=0,
            )
        folder = prepare_model("me5-small-facts", models / f"me5-small-facts-{dataset}", dataset=base_facts,
                               languages=languages, steps=args.model_steps, fact_split="all",
                               learning_rate=3e-4)  # fmt: skip
        report_editor_facts(folder, splits, languages)
        return {"task": "masked_lm", "languages": languages, "splits": splits, "folder": folder,
                "auto": AutoModelForMaskedLM, "new_target": "alternative", "scoring": "candidates",
                "label_language": label_language or "own", "candidates": mlama_candidates(args.data_dir, languages),
                "editing_items": None if label_language else editing_items(args, languages)}  # fmt: skip
    languages = list(args.xnli_languages)
    splits = load_xnli(args.data_dir, languages, seed=0, split_sizes=args.xnli_split_sizes)
    folder = prepare_model("me5-small-xnli", models / "me5-small-xnli", data_dir=args.data_dir, languages=languages,
                           split_sizes=args.xnli_split_sizes)  # fmt: skip
    return {"task": "seq_cls", "languages": languages, "splits": splits, "folder": folder,
            "auto": AutoModelForSequenceClassification, "new_target": "gold", "scoring": "open",
            "label_language": "own"}  # fmt: skip


def mlama_candidates(data_dir: str, languages: list[str]) -> dict[tuple[str, str], list[str]]:
    """`(relation, language)` -> mLAMA's candidate objects of the relation (47-413 of them): the second reading."""
    return {(relation, language): objects for language in languages
            for relation, objects in load_mlama_candidates(data_dir, language).items()}  # fmt: skip


def editing_items(args, languages: list[str]) -> dict:
    """The test split under the reference's `"editing"` names: one dataset per editing language (same facts, ids and
    split as the own-names one, every template filled with that language's names)."""
    return {language: load_mlama(args.data_dir, languages, relations=args.relations, label_language=language,
                                 max_per_relation=args.max_per_relation, split_sizes=args.split_sizes,
                                 seed=0)["test"] for language in languages}  # fmt: skip


def report_editor_facts(folder: Path, splits: dict, languages: list[str], per_language: int = 100) -> None:
    """Precision@1 of a base model on the editor's test facts (which it never trained on), once, beside the model:
    `editor_facts_eval.json` (docs/models.md reports it)."""
    from hf_lime.real_models.facts_eval import candidate_table, evaluate_facts, flatten_facts

    path = folder / "editor_facts_eval.json"
    if path.exists():
        return
    every = flatten_facts([row for split in splits.values() for row in split], languages)
    test = flatten_facts(splits["test"], languages)
    sample = [row for language in languages for row in [r for r in test if r["language"] == language][:per_language]]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager")
    scores = evaluate_facts(model, tokenizer, sample, candidate_table(every), progress=False)
    path.write_text(json.dumps({"split": "test", "relations": RELATIONS, **scores}, indent=2))
    logger.info("base model on the editor's test facts: %s", scores["precision_at_1_candidates"])


def parse_config(name: str) -> dict:
    parts = name.split("-")
    if len(parts) != 3:
        raise ValueError(
            f"A configuration is <editor>-<training>-<mask> (e.g. mend-all-language, ft_reference-untrained-off), "
            f"got {name!r}."
        )
    editor, training, mask = parts
    if editor not in ("mend", "ke", "ke_ref", *FT_SETTINGS) or training not in TRAININGS:
        raise ValueError(f"Unknown configuration {name!r}: <mend|ke|ke_ref|ft_*>-<{'|'.join(TRAININGS)}>-<mask>.")
    if training == "twin" and editor in FT_SETTINGS:
        raise ValueError(f"{name!r}: a fine-tuning baseline has no networks to leave untrained (twin is for editors).")
    if mask not in ("off", "language", "shared"):
        raise ValueError(f"Unknown mask {mask!r} in {name!r}: off, language or shared.")
    return {"editor": editor, "training": training, "mask": mask}


def lime_config(run: dict, languages: list[str], args) -> LimeConfig:
    if run["editor"] in FT_SETTINGS:
        return LimeConfig(languages=languages, editor="ft", use_lime_mask=False, **FT_SETTINGS[run["editor"]])
    if run["editor"] == "ke_ref":  # the LiME reference's KE: bi-LSTM conditioner, hidden 512, max_scale 1
        return LimeConfig(languages=languages, editor="ke", ke_conditioner="lstm", ke_hidden_dim=512,
                          use_lime_mask=run["mask"] != "off", edit_lr_init=1.0)  # fmt: skip
    edit_lr_init = KE_EDIT_LR_INIT if run["editor"] == "ke" else args.edit_lr_init
    return LimeConfig(languages=languages, editor=run["editor"], use_lime_mask=run["mask"] != "off",
                      mask_scope="shared" if run["mask"] == "shared" else "language",
                      mend_center=True, edit_lr_init=edit_lr_init)  # fmt: skip


def train(model, tokenizer, task: dict, run: dict, args, run_dir: Path) -> LimeTrainer:
    languages = task["languages"]
    roles = ({"edit_languages": ["en"], "update_languages": ["en"], "retain_languages": ["en"]}
             if run["training"] == "monolingual" else {})  # fmt: skip
    collator = EpisodeCollator(tokenizer, task["task"], label2id=model_label2id(model, task["task"]), max_length=64)
    train_args = LimeTrainingArguments.from_recipe(
        "cpu", output_dir=str(run_dir / "checkpoints"), max_steps=args.max_steps, learning_rate=args.learning_rate,
        c_edit=args.c_edit, logging_steps=10, eval_steps=args.eval_steps, save_steps=args.eval_steps,
        early_stopping_patience=args.patience, seed=run["seed"], use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, report_to="none",
    )  # fmt: skip
    trainer = LimeTrainer(
        model=model, args=train_args, data_collator=collator,
        train_dataset=EpisodeDataset(task["splits"]["train"], languages, n_retain=4, seed=run["seed"], **roles),
        eval_dataset=EpisodeDataset(task["splits"]["validation"], languages, n_retain=4, seed=run["seed"] + 1000,
                                    num_episodes=80, **roles),
    )  # fmt: skip
    last = resume_point(run_dir)
    if last is not None:
        logger.info("%s: resuming from %s", run["id"], last)
    trainer.train(resume_from_checkpoint=last)
    plot_training_curves(trainer.state.log_history, run_dir / "training_curves.png")
    return trainer


def resume_point(run_dir: Path) -> str | None:
    """The last checkpoint of an interrupted training of this run (its optimizer, step and early-stopping state
    included), or None: a run stopped by the end of a session continues where it was, not from step 0."""
    folder = run_dir / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def commit() -> str:
    """HEAD of the repository."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()


def run_one(run: dict, task: dict, args) -> tuple[dict, dict]:
    set_seed(run["seed"])
    start, code = time.time(), args.commit  # the code this process runs (HEAD may move while it runs)
    run_dir = Path(args.output_dir) / run["id"]
    tokenizer = AutoTokenizer.from_pretrained(task["folder"])
    base = task["auto"].from_pretrained(task["folder"], attn_implementation="eager")
    trained = trained_editor(run, args)
    episodes = best = None
    if run["training"] == "twin":
        model, best = untrained_twin_of(run, base, task, args)
        episodes = 0
    elif trained is not None:  # the same editor as the target-protocol run, read with another locality protocol
        model = PeftModel.from_pretrained(base, str(trained["path"]))
        episodes, best = trained["episodes"], str(trained["path"])
    else:
        model = get_peft_model(base, lime_config(run, task["languages"], args))
        if run["training"] != "untrained":
            trainer = train(model, tokenizer, task, run, args, run_dir)
            episodes, best = trainer.state.global_step, trainer.state.best_model_checkpoint
    model.eval()
    # FT with its locality term sees unrelated training-split prompts at edit time (never the scored retain items)
    options = evaluation_options(run, task, args)
    if args.preserve_weight is not None:
        options["edit_options"] = preserve_edit_options(
            model,
            tokenizer,
            task["task"],
            task["splits"]["train"],
            args.preserve_weight,
            task["languages"],
            max_length=64,
        )
    result = evaluate_editor(model, tokenizer, task["splits"]["test"], task["task"], **options)
    result.settings.update(label_language=task["label_language"], split="test", chosen_on=CHOSEN_ON)
    editing = None
    if run["reading"] == "strict" and task.get("editing_items"):
        # the whole-prompt reading of the other facts once, under the own names: here at the answer only
        editing = evaluate_editing_protocol(model, tokenizer, task["editing_items"], task["task"],
                                            **{**options, "locality": "target"})  # fmt: skip
        editing.settings.update(split="test", chosen_on=CHOSEN_ON)
    summary = {
        **{k: run[k] for k in ("id", "dataset", "variant", "editor", "training", "mask", "seed", "locality")},
        "reading": run["reading"], "episodes": episodes, "best_checkpoint": best and Path(best).name,
        "editor_dir": best and str(Path(best)), "n_facts": result.settings["n_facts"],
        "n_edits": result.metrics["n_edits"], "metrics": result.metrics, "settings": result.settings,
        "metrics_by_reading": {name: reading.metrics for name, reading in result.readings.items()},
        "split_sizes": list(args.xnli_split_sizes if run["dataset"] == "xnli" else args.split_sizes),
        "training_args": {k: getattr(args, k) for k in ("max_steps", "eval_steps", "patience", "learning_rate",
                                                         "edit_lr_init", "c_edit")},
        "adapter": {k: getattr(model.peft_config["default"], k) for k in ("editor", "ke_conditioner", "ke_hidden_dim",
                    "mend_center", "edit_lr_init", "use_lime_mask", "mask_scope")},
        "commit": code, "wall_s": round(time.time() - start, 1),
    }  # fmt: skip
    if editing is not None:
        summary["editing"] = {"metrics": editing.metrics, "settings": editing.settings,
                              "metrics_by_reading": {k: v.metrics for k, v in editing.readings.items()}}  # fmt: skip
    records = {"own": result.records, "editing": editing.records if editing is not None else None}
    return summary, records


def evaluation_options(run: dict, task: dict, args) -> dict:
    """The keyword arguments of `evaluate_editor` for a run (see the module docstring for the two readings)."""
    options = {"languages": task["languages"], "n_edits": args.n_edits, "n_retain": args.n_retain,
               "new_target": task["new_target"], "distinct_facts": True, "seed": run["seed"], "max_length": 64,
               "bootstrap": args.bootstrap, "progress": False, "return_records": True}  # fmt: skip
    if "ft_loc_coef" in FT_SETTINGS.get(run["editor"], {}):  # FT's locality term: unrelated training-split prompts
        options.update(locality_items=task["splits"]["train"], n_locality=args.n_retain)
    if run["reading"] == "lenient":
        return {**options, "scoring": task["scoring"], "locality": run["locality"]}
    strict = {"scoring": "open", "locality": "both" if task["task"] == "masked_lm" else "target"}
    if task["task"] == "masked_lm":
        strict.update(n_neighbours=args.n_neighbours, extra_scorings=("candidates",), candidates=task["candidates"])
    return {**options, **strict}


def untrained_twin_of(run: dict, base, task: dict, args) -> tuple[torch.nn.Module, str]:
    """`twin`: a fresh adapter (seeded as the `all` run's, so its networks are the ones that run started from) with
    the trained step sizes, masks and centring statistics of that run's best checkpoint; and that checkpoint."""
    from demo_controls import carry_trained_state

    source_id = run["id"].replace(f"-twin-{run['mask']}-", f"-all-{run['mask']}-", 1)
    summary_path = Path(args.runs_dir) / f"{source_id}.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{run['id']} is the control of {source_id}: run that first (no {summary_path}).")
    path = Path(json.loads(summary_path.read_text())["editor_dir"])
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{source_id}'s editor is not at {path} (it stays under --output_dir after its run).")
    with torch.random.fork_rng():  # loading draws random numbers: the twin draws its networks as the `all` run did
        trained = PeftModel.from_pretrained(task["auto"].from_pretrained(task["folder"], attn_implementation="eager"),
                                            str(path))  # fmt: skip
    twin = get_peft_model(base, copy.deepcopy(trained.peft_config["default"]))
    logger.info("%s: the untrained networks of %s with its trained step sizes (%s)", run["id"], source_id, path)
    return carry_trained_state(twin, trained), str(path)


def trained_editor(run: dict, args) -> dict | None:
    """The best checkpoint of the target-protocol run of the same configuration, for a `-seqloc` run, or of the run
    without the variant, for a `--preserve_weight` run (or None)."""
    if run["training"] in ("untrained", "twin"):
        return None
    if args.preserve_weight is not None:
        base_id = run["id"].replace(f"-{run['variant']}", "", 1)
    elif run["locality"] == "target":
        return None
    else:
        base_id = run["id"].removesuffix(SEQUENCE_SUFFIX)
    summary_path = Path(args.runs_dir) / f"{base_id}.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    path = Path(args.output_dir) / base_id / "checkpoints" / str(summary.get("best_checkpoint"))
    if not (path / "adapter_config.json").exists():
        if args.preserve_weight is not None:  # a reading of a trained editor: never train one for it
            raise FileNotFoundError(f"{run['id']} reads the editor of {base_id}, which is not at {path}.")
        return None
    logger.info("reusing the editor of %s (%s)", base_id, path)
    return {"path": path, "episodes": summary["episodes"]}


def grid(args) -> list[dict]:
    variant = args.variant
    if variant is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", variant):
        raise ValueError(f"--variant must be letters, digits, '_' or '.', got {variant!r}")
    if args.preserve_weight is not None and not variant:
        raise ValueError("--preserve_weight reads a trained editor another way: name the reading with --variant.")
    suffix = (f"-{variant}" if variant else "") + (SEQUENCE_SUFFIX if args.locality == "sequence" else "")
    suffix += STRICT_SUFFIX if args.reading == "strict" else ""
    return [
        {"id": f"{dataset}-{name}-seed{seed}{suffix}", "dataset": dataset, "seed": seed, "locality": args.locality,
         "variant": variant, "reading": args.reading, **parse_config(name)}
        for dataset in args.datasets
        for name in args.configs
        for seed in args.seeds
    ]  # fmt: skip


def main() -> None:
    args = parse_args()
    args.commit = commit()  # once, at the start: the code every run of this process imports
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_dir = Path(args.runs_dir)
    if args.compare:
        from summarise_runs import compare_runs

        base, cand = ([name.format(seed=seed) for seed in args.seeds] for name in args.compare)
        print("\n".join(compare_runs(runs_dir, base, cand, bootstrap=args.bootstrap)))
        return
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        for dataset in args.datasets:
            logger.info("base model of %s in %s", dataset, load_task(dataset, args)["folder"])
        return
    if not args.summary_only:
        tasks: dict[str, dict] = {}
        for run in grid(args):
            path = runs_dir / f"{run['id']}.json"
            if path.exists():
                continue
            if run["dataset"] not in tasks:
                tasks[run["dataset"]] = load_task(run["dataset"], args)
            logger.info("run %s", run["id"])
            summary, records = run_one(run, tasks[run["dataset"]], args)
            for name, part in (("records", records["own"]), ("editing.records", records["editing"])):
                if part is not None:
                    with gzip.open(runs_dir / f"{run['id']}.{name}.json.gz", "wt", encoding="utf-8") as handle:
                        json.dump(part, handle)
            path.write_text(json.dumps(summary, indent=2, default=float))
    from summarise_runs import summarise

    summarise(runs_dir, Path(args.runs_dir).parent)


if __name__ == "__main__":
    main()
