"""Train a cross-lingual editor (LiME-MEND, MEND, KE) on parallel data, evaluate it across languages, save it.

Examples (run from the repository root; `../shared/data` holds mLAMA and XNLI):

    # LiME-MEND, all -> all over three languages, on a local masked LM (e.g. one made by `hf-lime prepare-model`)
    python examples/train_lime.py --model_name_or_path outputs/models/me5-small-facts \
        --dataset mlama --data_dir ../shared/data --languages en fr zh --relations P19 P36 P37 \
        --max_steps 500 --output_dir outputs/lime-mend

    # the same under Accelerate, two processes (on a CPU-only machine `--multi_gpu` gives two gloo processes;
    # note that `--cpu --num_processes 2` silently runs ONE process)
    accelerate launch --multi_gpu --num_processes 2 examples/train_lime.py --model_name_or_path ... --use_cpu

    # the frozen base model sharded across the processes (FSDP), or DDP, from a config file (docs/training.md)
    accelerate launch --config_file examples/accelerate_configs/fsdp.yaml examples/train_lime.py ...

    # push the trained editor (LimeEditor.from_pretrained("org/my-editor") loads it back)
    python examples/train_lime.py ... --push_to_hub --hub_model_id org/my-editor

    # monolingual training (en -> en), LiME off, KnowledgeEditor
    python examples/train_lime.py ... --preset monolingual --no_lime --editor ke

    # XNLI with a sequence classifier; the fine-tuning baseline needs no training and is only evaluated
    python examples/train_lime.py --model_name_or_path outputs/models/me5-small-xnli --dataset xnli \
        --data_dir ../shared/data --languages en de fr ru zh --editor ft --output_dir outputs/ft-xnli

    # CLDR country facts (generated offline with babel), each language's own names, read over the whole vocabulary
    python examples/train_lime.py --model_name_or_path outputs/models/me5-small-cldr --dataset cldr \
        --languages en fr de es ru zh --recipe cpu --mend_center --edit_lr_init 3e-4 \
        --max_steps 300 --output_dir outputs/lime-cldr

`--n_edit K` trains on episodes of K edits at once (one editor call over all of them, as
`LimeEditor.edit_many(..., mode="batch")` makes), for an editor that will be used to make K edits at a time; the saved
editor's `training_info` records `n_edit` and `edit_batch_size` (K times `--per_device_train_batch_size`).

Training follows a named recipe of `LIME_RECIPES` (`--recipe`, default `reference`: the LiME reference code's MEND
recipe — constant Adam, 10 episodes per optimizer step, clipping at 100, c_edit 0.1, c_loc 1, validation episodes
every `--eval_steps` with early stopping on their hmean and the best editor kept). Every flag given on the command
line wins over the recipe, and every `TrainingArguments` flag works (`--per_device_train_batch_size`,
`--learning_rate`, `--eval_steps`...).

At the end the script writes `training_curves.png` (edit/locality accuracy, loss parts, step sizes, gates, gradient
norm), evaluates edits on the test split in every language, prints a per-language table, writes `metrics.json` and
heatmaps to `--output_dir`, and saves the editor there (loadable with `PeftModel.from_pretrained` or
`LimeEditor.from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    set_seed,
)

from hf_lime import LimeConfig, LimeEditor
from hf_lime.data import load_cldr_facts, load_mlama, load_xnli
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset, episode_languages
from hf_lime.tasks import model_label2id
from hf_lime.trainer import LimeTrainer, LimeTrainingArguments
from hf_lime.trainer.curves import CURVES_FILE, plot_training_curves
from hf_lime.trainer.training_args import LIME_RECIPES

logger = logging.getLogger("train_lime")
TASK_OF_DATASET = {"mlama": "masked_lm", "cldr": "masked_lm", "xnli": "seq_cls"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Base model (a local folder or a Hub id)."})
    editor: str = field(default="mend", metadata={"help": "'mend', 'ke' or 'ft'."})
    lime: bool = field(default=True, metadata={"help": "LiME language masks on (--lime) or off (--no_lime)."})
    edit_lr_init: float = field(default=1e-4, metadata={"help": "Initial learned edit step size."})
    mend_rank: int = field(default=1920, metadata={"help": "MEND bottleneck width."})
    num_top_layers: int = field(default=3, metadata={"help": "Edit the FFN linears of the top N blocks."})
    mend_center: bool = field(default=False, metadata={"help": "Centre MEND's inputs on their training mean."})
    mask_scope: str = field(default="language", metadata={"help": "'language' (LiME) or 'shared' (one mask)."})
    mend_compute_dtype: str = field(
        default="float32", metadata={"help": "MEND's matrix products: 'float32' or 'bfloat16' (faster with AMX)."}
    )


@dataclass
class DataArguments:
    dataset: str = field(default="mlama", metadata={"help": "'mlama', 'cldr' (generated with babel) or 'xnli'."})
    data_dir: str = field(default="../shared/data", metadata={"help": "Folder holding mlama1.1/ or xnli/."})
    relations: list[str] | None = field(default=None, metadata={"help": "mLAMA relations (default: all)."})
    max_per_relation: int | None = field(default=200, metadata={"help": "Cap on facts per relation."})
    label_language: str = field(
        default="own",
        metadata={
            "help": "mlama/cldr, whose names fill the templates (hf_lime.data.names): 'own' (each language's own "
            "names, the default) or a language code (that language's names in every template)."
        },
    )
    max_length: int = field(default=64, metadata={"help": "Maximum tokens per example."})
    n_test_edits: int = field(default=20, metadata={"help": "Test edits per editing language."})
    n_test_retain: int = field(default=8, metadata={"help": "Facts of other relations scored per test edit."})
    n_test_neighbours: int = field(
        default=5, metadata={"help": "mlama/cldr: facts of the edited relation about other subjects per test edit."}
    )
    scoring: str = field(default="open", metadata={"help": "'open' (whole vocabulary) or 'candidates' (ranked)."})
    skip_test: bool = field(default=False, metadata={"help": "Train and save only; no test-split evaluation."})
    recipe: str = field(default="reference", metadata={"help": f"Training recipe: {sorted(LIME_RECIPES)}."})


def load_data(data_args: DataArguments, languages: list[str], seed: int):
    if data_args.dataset == "mlama":
        return load_mlama(
            data_args.data_dir,
            languages,
            relations=data_args.relations,
            max_per_relation=data_args.max_per_relation,
            seed=seed,
            label_language=data_args.label_language,
        )
    if data_args.dataset == "cldr":
        return load_cldr_facts(languages, seed=seed, label_language=data_args.label_language)
    if data_args.dataset == "xnli":
        return load_xnli(data_args.data_dir, languages, seed=seed)
    raise ValueError(f"--dataset must be 'mlama', 'cldr' or 'xnli', got {data_args.dataset!r}.")


def load_base(model_args: ModelArguments, task: str):
    auto = AutoModelForMaskedLM if task == "masked_lm" else AutoModelForSequenceClassification
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = auto.from_pretrained(model_args.model_name_or_path, attn_implementation="eager")
    return model, tokenizer


def episode_args(args: LimeTrainingArguments, languages: list[str]) -> dict:
    chosen = episode_languages(args.preset, languages) if args.preset else {}
    for name in ("edit_languages", "update_languages", "retain_languages"):
        if getattr(args, name):
            chosen[name] = list(getattr(args, name))
    return chosen


def parse_arguments() -> tuple[ModelArguments, DataArguments, LimeTrainingArguments]:
    """Parse the command line over the defaults of the chosen `--recipe` (flags on the command line win)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, LimeTrainingArguments))
    data_args = parser.parse_args_into_dataclasses(return_remaining_strings=True)[1]
    if data_args.recipe not in LIME_RECIPES:
        raise ValueError(f"--recipe must be one of {sorted(LIME_RECIPES)}, got {data_args.recipe!r}.")
    parser.set_defaults(**LIME_RECIPES[data_args.recipe])
    namespace = parser.parse_args()
    if "no" in (str(namespace.eval_strategy), str(namespace.save_strategy)):
        # no validation (or no checkpoints) asked for: no best editor to keep, no early stopping
        namespace.load_best_model_at_end, namespace.early_stopping_patience = False, None
    values = vars(namespace)
    model_args, data_args, args = (
        cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
        for cls in (ModelArguments, DataArguments, LimeTrainingArguments)
    )
    return model_args, data_args, args


def main() -> None:
    model_args, data_args, args = parse_arguments()
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    if not args.languages:
        raise ValueError("Pass --languages, e.g. --languages en fr zh")
    languages, task = list(args.languages), TASK_OF_DATASET.get(data_args.dataset)
    set_seed(args.seed)
    splits = load_data(data_args, languages, args.seed)
    base, tokenizer = load_base(model_args, task)
    config = LimeConfig(
        languages=languages,
        editor=model_args.editor,
        use_lime_mask=model_args.lime and model_args.editor != "ft",
        edit_lr_init=model_args.edit_lr_init,
        mend_rank=model_args.mend_rank,
        num_top_layers=model_args.num_top_layers,
        mend_center=model_args.mend_center,
        mask_scope=model_args.mask_scope,
        mend_compute_dtype=model_args.mend_compute_dtype,
    )
    model = get_peft_model(base, config)
    label2id = model_label2id(base, task)
    collator = EpisodeCollator(tokenizer, task, label2id=label2id, max_length=data_args.max_length)
    chosen = episode_args(args, languages)
    train_info = {"dataset": data_args.dataset, "languages": languages, **chosen, "max_steps": args.max_steps}
    train_info.update(world_size=args.world_size, base_model=model_args.model_name_or_path,
                      editor=model_args.editor, lime=config.use_lime_mask)  # fmt: skip
    if model.base_model.editor.requires_training:
        common = {"languages": languages, "n_edit": args.n_edit, "n_retain": args.n_retain, **chosen}
        trainer = LimeTrainer(
            model=model,
            args=args,
            train_dataset=EpisodeDataset(splits["train"], seed=args.episode_seed, **common),
            eval_dataset=EpisodeDataset(splits["validation"], seed=args.episode_seed + 1, num_episodes=64, **common),
            data_collator=collator,
            processing_class=tokenizer,
        )
        output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        train_info.update(trainer.episode_settings())  # n_edit, edit_batch_size: the batch sizes it was trained for
        train_info["global_step"] = trainer.state.global_step
        train_info["best_step"] = _best_step(trainer)
        if args.process_index == 0:
            trainer.save_metrics("train", output.metrics)
            plot_training_curves(trainer.state.log_history, Path(args.output_dir) / CURVES_FILE)
        if trainer.is_fsdp_enabled:
            model = gathered_editor(trainer, model_args, task, args)
    if args.process_index == 0 and data_args.skip_test:
        LimeEditor(model, tokenizer, task=task, training_info=train_info).save_pretrained(
            args.output_dir, base_model_name_or_path=train_info["base_model"]
        )
    elif args.process_index == 0:
        finish(model, tokenizer, splits["test"], task, label2id, languages, data_args, args, train_info)


def gathered_editor(trainer: LimeTrainer, model_args: ModelArguments, task: str, args: LimeTrainingArguments):
    """Under FSDP the trained editor and the base model are sharded across the processes: every process takes part
    in saving the editor (from the gathered weights) to `--output_dir`; the main process goes on with that editor
    loaded onto a fresh copy of the base model (`None` on the other processes, which are done)."""
    trainer.save_model(args.output_dir)
    if args.process_index != 0:
        return None
    base, _ = load_base(model_args, task)
    return PeftModel.from_pretrained(base, args.output_dir)


def _best_step(trainer: LimeTrainer) -> int | None:
    checkpoint = trainer.state.best_model_checkpoint
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def finish(model, tokenizer, test_items, task, label2id, languages, data_args, args, train_info) -> None:
    """Evaluate on the test split (main process only), print the table, write metrics.json, plots and the editor."""
    from hf_lime.evaluation import evaluate_editor, format_table, json_safe, save_report

    model.eval()
    result = evaluate_editor(
        model,
        tokenizer,
        test_items,
        task,
        languages=languages,
        n_edits=data_args.n_test_edits,
        n_retain=data_args.n_test_retain,
        n_neighbours=data_args.n_test_neighbours if data_args.dataset != "xnli" else 0,
        seed=args.seed,
        label2id=label2id,
        max_length=data_args.max_length,
        scoring=data_args.scoring,
    )
    print(format_table(result))
    output_dir = Path(args.output_dir)
    save_report(result, output_dir)
    editor = LimeEditor(model, tokenizer, task=task, training_info=train_info, metrics=json_safe(result.metrics))
    editor.save_pretrained(output_dir, base_model_name_or_path=train_info["base_model"])
    (output_dir / "training_info.json").write_text(json.dumps(train_info, indent=2))
    logger.info("Editor, metrics.json and plots written to %s", output_dir)
    if args.push_to_hub:  # the complete editor, with its test metrics in the model card
        repo_id = args.hub_model_id or output_dir.name
        editor.push_to_hub(repo_id, token=args.hub_token, private=args.hub_private_repo,
                           commit_message="LiME editor with its cross-lingual test metrics")  # fmt: skip
        logger.info("Pushed the editor to the Hub repo %s", repo_id)


def close_process_group() -> None:
    """Shut this process's part of the process group down before the interpreter exits. A process that is done
    early (every one but the main process, which goes on to evaluate) otherwise leaves gloo's threads to the
    interpreter's teardown, which can abort it ("terminate called without an active exception") and make
    `accelerate launch` report the whole run as failed. Shutting down is local: no other process waits on it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_other_processes() -> None:
    """After a successful run, every process but the main one leaves without the interpreter's teardown: it has
    written nothing and waits on nothing, and the teardown of its communication threads (FSDP's and gloo's) can still
    abort it ("terminate called without an active exception"), which `accelerate launch` reports as a failed run."""
    if int(os.environ.get("RANK", "0")) != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        main()
    finally:
        close_process_group()
    exit_other_processes()
