"""The controls a trained demo editor is read against, paired on its own edits (docs/results.md, "The demo").

`make demo` writes the trained editor and the records of its evaluation (`records.json`). This script evaluates, on
exactly the same edits (same facts, new targets, neighbours, retain facts, languages and readings):

- `untrained`: the same editor with its MEND networks at their initial weights (a fresh adapter of the same
  configuration and seed) but the *trained* per-layer step sizes, LiME masks and centring statistics: what training
  the networks bought beyond what a step size can do;
- `ft_tuned`: the fine-tuning baseline at the step size and step count chosen for it on mLAMA's validation split
  (`benchmarks/reproduce.py`'s `ft_tuned`: Adam 5e-4, 10 steps; not re-tuned on CLDR);

and prints, for each control, the paired difference `trained − control` of reliability, transfer, same-relation
locality and their harmonic mean, with an interval resampling the facts (`compare_xl_edit_metrics`). The floor of an
editor that changes nothing is in the demo's own `settings.json` (`pre_edit_floor`; its locality is 1 by definition).

    OMP_NUM_THREADS=1 python benchmarks/demo_controls.py --editor outputs/demo --json docs/results/demo/controls.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForMaskedLM

from hf_lime import LimeConfig, LimeEditor
from hf_lime.data import load_cldr_facts
from hf_lime.evaluation import candidate_table, evaluate_editor, json_safe
from hf_lime.metrics import compare_xl_edit_metrics

FT_TUNED = {"ft_optimizer": "adam", "ft_lr": 5e-4, "ft_steps": 10}  # reproduce.py's ft_tuned
KEPT = ("edit_lrs", "lime_masks", "x_mean", "x_count")  # what `untrained` takes from the trained editor
METRICS = ("reliability", "transfer", "locality_same_relation", "locality_other", "hmean_same_relation")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="outputs/demo", help="A folder written by `make demo`.")
    parser.add_argument("--controls", nargs="+", default=["untrained", "ft_tuned"], choices=["untrained", "ft_tuned"])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", default=None, help="Write every control's metrics and paired differences here.")
    return parser.parse_args()


def demo_options(folder: Path, languages: list[str], splits) -> dict:
    """`evaluate_editor`'s arguments as the demo ran them (from its settings.json)."""
    settings = json.loads((folder / "settings.json").read_text())
    return {"languages": languages, "n_edits": settings["n_edits"], "n_retain": settings["n_retain"],
            "n_neighbours": settings["n_neighbours"], "seed": settings["seed"], "max_length": 48,
            "scoring": settings["scoring"], "extra_scorings": tuple(settings["extra_scorings"]),
            "candidates": candidate_table([row for split in splits.values() for row in split]),
            "bootstrap": 0, "return_records": True, "locality": settings["locality"]}  # fmt: skip


def untrained_twin(editor: LimeEditor, base_path: str) -> torch.nn.Module:
    """A fresh adapter of the editor's configuration (networks at their initial weights, seeded as the demo's),
    carrying the trained step sizes, masks and centring statistics."""
    torch.manual_seed(0)
    base = AutoModelForMaskedLM.from_pretrained(base_path, attn_implementation="eager")
    twin = get_peft_model(base, copy.deepcopy(editor.config))
    return carry_trained_state(twin, editor.model).eval()


def carry_trained_state(twin: torch.nn.Module, trained: torch.nn.Module) -> torch.nn.Module:
    """`twin` (a fresh adapter of `trained`'s configuration) with `trained`'s step sizes, LiME masks and centring
    statistics (`KEPT`) and its own, initial, editor networks."""
    kept = {name: value for name, value in trained.state_dict().items() if any(part in name for part in KEPT)}
    state = twin.state_dict()
    if not kept or set(kept) - set(state):
        raise ValueError(f"Could not carry the trained step sizes over: {sorted(set(kept) - set(state))[:5]}.")
    twin.load_state_dict({**state, **kept})
    return twin


def ft_twin(editor: LimeEditor, base_path: str) -> torch.nn.Module:
    base = AutoModelForMaskedLM.from_pretrained(base_path, attn_implementation="eager")
    config = LimeConfig(languages=list(editor.languages), editor="ft", use_lime_mask=False, **FT_TUNED)
    return get_peft_model(base, config).eval()


def compare(trained: dict, control: dict, bootstrap: int, metrics: tuple[str, ...] = METRICS) -> dict:
    """`metrics` of `trained − control`, paired over the same edits (records with `group_ids`), intervals over
    facts."""
    groups = control["group_ids"]
    strip = [{k: v for k, v in records.items() if k != "group_ids"} for records in (control, trained)]
    result = compare_xl_edit_metrics(*strip, group_ids=groups, bootstrap=bootstrap)
    return {name: result[name] for name in metrics}


def main() -> None:
    args = parse_args()
    folder = Path(args.editor)
    editor = LimeEditor.from_pretrained(folder)
    info = editor.training_info or {}
    languages = list(editor.languages)
    splits = load_cldr_facts(languages, seed=0, label_language=info.get("label_language", "own"))
    options = demo_options(folder, languages, splits)
    trained = json.loads((folder / "records.json").read_text())
    report: dict = {"editor": str(folder), "ft_tuned": FT_TUNED, "controls": {}}
    for name in args.controls:
        start = time.time()
        model = (
            untrained_twin(editor, info["base_model"]) if name == "untrained" else ft_twin(editor, info["base_model"])
        )
        result = evaluate_editor(model, editor.tokenizer, splits["test"], "masked_lm", **options)
        differences = compare(trained, result.records, args.bootstrap)
        report["controls"][name] = {"metrics": {k: result.metrics[k] for k in METRICS}, "trained_minus_control":
                                    differences, "seconds": round(time.time() - start, 1)}  # fmt: skip
        print(f"\ntrained − {name} (paired over the same {result.metrics['n_edits']} edits, intervals over facts):")
        for metric, value in differences.items():
            low, high = value["ci"]
            print(f"  {metric:<24} trained {value['candidate']:.3f}  {name} {value['baseline']:.3f}  "
                  f"difference {value['difference']:+.3f} [{low:+.3f}, {high:+.3f}]")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(report), indent=2) + "\n")


if __name__ == "__main__":
    main()
