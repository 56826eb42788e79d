"""Reproduction study: do the LiME paper's claims hold with a real multilingual model on real parallel data?

Grid: editors {FT, KE, MEND} × training {monolingual en → en, all → all} × LiME {off, on} × seeds, on mLAMA (with the
`me5-small-facts` masked LM trained on the same training split) and XNLI (with the `me5-small-xnli` classifier).
FT is not trained (one row per dataset and seed). Every run writes `runs/<id>.json`; finished runs are skipped, so
the study is resumable. At the end `summary.md` / `summary.json` aggregate over seeds.

    python benchmarks/reproduce.py --output_dir outputs/reproduce          # the full default grid (hours on CPU)
    python benchmarks/reproduce.py --datasets mlama --editors mend --seeds 0 --steps 100   # a quick slice

Claims checked (paper, Findings of ACL 2023): (a) monolingually trained editors fail to propagate edits to other
languages; (b) cross-lingual (all → all) training improves transfer by a large margin; (c) LiME lowers the failure
rate further and narrows the language gap.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

from hf_lime import LimeConfig
from hf_lime.data import load_mlama, load_xnli
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.evaluation import evaluate_editor, save_report
from hf_lime.models.prepare import prepare_model
from hf_lime.tasks import model_label2id
from hf_lime.trainer import LimeTrainer, LimeTrainingArguments

logger = logging.getLogger("reproduce")
MLAMA_LANGUAGES = ["en", "fr", "de", "es", "ru", "zh", "ar", "ja"]
XNLI_LANGUAGES = ["en", "fr", "de", "es", "ru", "zh", "ar", "hi"]
# Relations present in all eight default languages of the mLAMA release (P30, P103, P140 are missing in some).
RELATIONS = ["P17", "P19", "P20", "P27", "P36", "P37", "P106", "P138", "P176", "P364", "P407", "P495"]
KEYS = ("reliability", "transfer", "edit_success", "locality", "hmean", "language_gap", "language_std")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/reproduce")
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--datasets", nargs="+", default=["mlama", "xnli"])
    p.add_argument("--editors", nargs="+", default=["ft", "ke", "mend"])
    p.add_argument("--settings", nargs="+", default=["monolingual", "all"])
    p.add_argument("--lime", nargs="+", default=["off", "on"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=300, help="Editor training steps per run.")
    p.add_argument("--episodes_per_step", type=int, default=4, help="Training episodes per optimizer step.")
    p.add_argument("--model_steps", type=int, default=None, help="Steps of the base-model recipes (default theirs).")
    p.add_argument("--mlama_languages", nargs="+", default=MLAMA_LANGUAGES)
    p.add_argument("--xnli_languages", nargs="+", default=XNLI_LANGUAGES)
    p.add_argument("--relations", nargs="+", default=RELATIONS)
    p.add_argument("--max_per_relation", type=int, default=150)
    p.add_argument("--n_edits", type=int, default=20, help="Test edits per editing language.")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--mend_rank", type=int, default=384)
    p.add_argument("--summary_only", action="store_true", help="Only aggregate the finished runs of the grid.")
    return p.parse_args()


def load_task(dataset: str, args) -> dict:
    """Base model folder, tokenizer, splits and evaluation mode of one dataset (models are built once, cached)."""
    models = Path(args.output_dir) / "models"
    if dataset == "mlama":
        languages = list(args.mlama_languages)
        splits = load_mlama(args.data_dir, languages, relations=args.relations,
                            max_per_relation=args.max_per_relation, seed=0)  # fmt: skip
        folder = prepare_model("me5-small-facts", models / "me5-small-facts-mlama", dataset=splits,
                               languages=languages, steps=args.model_steps)  # fmt: skip
        return {"task": "masked_lm", "languages": languages, "splits": splits, "folder": folder,
                "auto": AutoModelForMaskedLM, "new_target": "alternative"}  # fmt: skip
    languages = list(args.xnli_languages)
    splits = load_xnli(args.data_dir, languages, seed=0)
    folder = prepare_model("me5-small-xnli", models / "me5-small-xnli", data_dir=args.data_dir,
                           languages=languages, steps=args.model_steps)  # fmt: skip
    return {"task": "seq_cls", "languages": languages, "splits": splits, "folder": folder,
            "auto": AutoModelForSequenceClassification, "new_target": "gold"}  # fmt: skip


def grid(args) -> list[dict]:
    runs = []
    for dataset in args.datasets:
        for editor in args.editors:
            settings = ["untrained"] if editor == "ft" else args.settings
            limes = ["off"] if editor == "ft" else args.lime
            for setting in settings:
                for lime in limes:
                    for seed in args.seeds:
                        run_id = f"{dataset}-{editor}-{setting}-lime_{lime}-seed{seed}"
                        runs.append(dict(id=run_id, dataset=dataset, editor=editor, setting=setting, lime=lime,
                                         seed=seed))  # fmt: skip
    return runs


def train(model, tokenizer, task_info: dict, run: dict, args, run_dir: Path) -> int:
    languages = task_info["languages"]
    roles = ({"edit_languages": ["en"], "update_languages": ["en"], "retain_languages": ["en"]}
             if run["setting"] == "monolingual" else {})  # fmt: skip
    label2id = model_label2id(model, task_info["task"])
    train_args = LimeTrainingArguments(
        output_dir=str(run_dir / "checkpoints"), max_steps=args.steps,
        per_device_train_batch_size=args.episodes_per_step,
        learning_rate=1e-4, logging_steps=25, save_strategy="no", seed=run["seed"],
        use_cpu=not torch.cuda.is_available(), c_edit=1.0, c_loc=1.0, disable_tqdm=True,
    )  # fmt: skip
    trainer = LimeTrainer(
        model=model, args=train_args,
        train_dataset=EpisodeDataset(task_info["splits"]["train"], languages, n_retain=4, seed=run["seed"], **roles),
        data_collator=EpisodeCollator(tokenizer, task_info["task"], label2id=label2id, max_length=64),
    )  # fmt: skip
    trainer.train()
    return trainer.state.global_step


def run_one(run: dict, task_info: dict, args, out: Path) -> dict:
    set_seed(run["seed"])
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(task_info["folder"])
    base = task_info["auto"].from_pretrained(task_info["folder"], attn_implementation="eager")
    config = LimeConfig(languages=task_info["languages"], editor=run["editor"], use_lime_mask=run["lime"] == "on",
                        mend_rank=args.mend_rank, edit_lr_init=1e-3)  # fmt: skip
    model = get_peft_model(base, config)
    steps = 0 if run["editor"] == "ft" else train(model, tokenizer, task_info, run, args, out / run["id"])
    model.eval()
    result = evaluate_editor(
        model, tokenizer, task_info["splits"]["test"], task_info["task"], languages=task_info["languages"],
        n_edits=args.n_edits, n_retain=8, new_target=task_info["new_target"], seed=run["seed"], max_length=64,
        bootstrap=args.bootstrap, progress=False,
    )  # fmt: skip
    save_report(result, out / run["id"])
    return {**run, "steps": steps, "wall_s": round(time.time() - start, 1), "metrics": result.metrics}


def summarise(results: list[dict], out: Path) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["editor"], r["setting"], r["lime"]), []).append(r)
    lines = ["| dataset | editor | training | LiME | seeds | " + " | ".join(KEYS) + " | wall s |",
             "|" + "---|" * (len(KEYS) + 6)]  # fmt: skip
    summary = []
    for key, rows in sorted(groups.items()):
        cells, row = [], dict(zip(("dataset", "editor", "setting", "lime"), key, strict=True), seeds=len(rows))
        for name in KEYS:
            values = np.array([float(r["metrics"][name]) for r in rows])
            row[name] = [float(np.nanmean(values)), float(np.nanstd(values))]
            cells.append(f"{row[name][0]:.3f} ± {row[name][1]:.3f}")
        row["wall_s"] = float(np.mean([r["wall_s"] for r in rows]))
        summary.append(row)
        lines.append(f"| {' | '.join(key)} | {len(rows)} | " + " | ".join(cells) + f" | {row['wall_s']:.0f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for dataset in sorted({row["dataset"] for row in summary}):
        plot_summary([row for row in summary if row["dataset"] == dataset], out / f"summary_{dataset}.png")
    logger.info("\n%s", "\n".join(lines))


def plot_summary(rows: list[dict], path: Path) -> Path:
    """Bars of reliability / transfer / locality (mean ± std over seeds) for each grid row of one dataset."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = ("reliability", "transfer", "locality")
    labels = [f"{r['editor'].upper()}\n{r['setting']}\nLiME {r['lime']}" for r in rows]
    figure = Figure(figsize=(max(5.0, 1.2 * len(rows) + 1.5), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    for offset, name in zip((-0.27, 0.0, 0.27), names, strict=True):
        means = [r[name][0] for r in rows]
        stds = [r[name][1] for r in rows]
        axes.bar(positions + offset, means, width=0.27, yerr=stds, capsize=2, label=name)
    axes.set_xticks(positions, labels, fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("mean over seeds (± std)")
    axes.set_title(f"{rows[0]['dataset']}: edits made in one language, scored in all")
    axes.legend(fontsize=7, ncols=3, loc="upper right")
    figure.savefig(path, dpi=130)
    return path


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict] = {}
    results = []
    for run in grid(args):
        path = out / "runs" / f"{run['id']}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        if args.summary_only:
            continue
        if run["dataset"] not in tasks:
            tasks[run["dataset"]] = load_task(run["dataset"], args)
        logger.info("run %s", run["id"])
        result = run_one(run, tasks[run["dataset"]], args, out)
        path.write_text(json.dumps(result, indent=2, default=float))
        results.append(result)
    summarise(results, out)


if __name__ == "__main__":
    main()
