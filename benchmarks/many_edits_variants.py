"""Two variants of `edit_many`'s preservation tried in session 34 (neither kept; docs/results.md §5a).

Runs `benchmarks/many_edits.py` with its arguments, one of these changes wrapped around the library (nothing in
`hf_lime` is changed for good):

- `--variant answer_moments --beta B`: the preserved keys' second moment `C` mixes the moment over every token of the
  preserved prompts with the moment over their answer positions only (`(1 − B) C_all + B C_answer`): the positions
  where a masked LM reads its answer, where the edited relation's other facts are decided.
- `--variant anchors --anchor_weight L`: after each fit, the preserved facts the model knew before the batch and no
  longer gets right are "anchors": their answer positions' keys (read on the unedited model) join `C` with weight `L`
  per key relative to an edit token (`C + L / (w T) Σ x xᵀ`, `T` the layer's edit tokens), and the batch is refitted;
  anchors accumulate over the fits, and a fit that breaks new facts is followed by another (the library's number of
  fits at most).

    OMP_NUM_THREADS=1 python benchmarks/many_edits_variants.py --variant anchors --anchor_weight 4 --dataset cldr \
        --split train --n 100 --settings one --modes batch --combine solve --preserve 5000 \
        --editors lime_refit=outputs/demo --results /tmp/rows.json --figure /tmp/rows.png
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import many_edits  # noqa: E402 (the study itself, run with the variant in place)

from hf_lime.deltas import SOLVE_POSITIONS  # noqa: E402
from hf_lime.editor import LimeEditor, _fact_pair  # noqa: E402
from hf_lime.head import target_logits, target_positions  # noqa: E402
from hf_lime.tuner.model import LimeModel  # noqa: E402
from hf_lime.tuner.preserve import MODEL_INPUTS, _smallest_network  # noqa: E402
from hf_lime.tuner.refit import DEFAULT_REFIT_WEIGHT, refit_layers  # noqa: E402

PRESERVED: dict[str, list] = {}  # the preserved facts' batches, whether the unedited model knew each, their keys
ROWS_PER_BATCH = 64


@torch.no_grad()
def answer_keys(tuner: Any, batch: dict, task: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per edited layer, its inputs at `batch`'s answer positions (float64), and the batch row of each."""
    layers = tuner.lime_layers
    with ExitStack() as stack:
        captures = {key: stack.enter_context(layer.capture()) for key, layer in layers.items()}
        _smallest_network(tuner.model, layers.values())(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        positions = target_positions(task, batch["labels"])
        keys = {key: torch.cat([c.inputs[positions] for c in cap]).double() for key, cap in captures.items()}
    return keys, positions.nonzero()[:, 0]


def read_preserved(editor: LimeEditor, facts: list, max_length: int, known: bool) -> None:
    """Encode the preserved facts and record, on the unedited model, their answer keys and, with `known`, which
    of them it knows (what the anchors need)."""
    examples = [editor._encode(*_fact_pair(fact, i), max_length) for i, fact in enumerate(facts)]
    batches = [editor._padded(examples[i : i + ROWS_PER_BATCH]) for i in range(0, len(examples), ROWS_PER_BATCH)]
    PRESERVED["batches"] = batches
    if known:
        PRESERVED["known"] = [torch.tensor(target_logits(editor.model, b, editor.task).row_correct()) for b in batches]
    PRESERVED["keys"] = [answer_keys(editor.model.base_model, b, editor.task) for b in batches]


def answer_moments(beta: float):
    """`LimeEditor.key_moments` replaced: the all-token moment mixed with the answer positions' moment."""
    library = LimeEditor.key_moments

    def key_moments(self: LimeEditor, facts: list, batch_size: int = 32, max_length: int = 128) -> dict:
        every = library(self, facts, batch_size, max_length)
        read_preserved(self, facts, max_length, known=False)
        answers: dict[str, torch.Tensor] = {}
        count = 0
        for keys, rows in PRESERVED["keys"]:
            count += rows.numel()
            for key, x in keys.items():
                answers[key] = x.T @ x + answers.get(key, 0)
        return {key: (1 - beta) * every[key] + beta * answers[key] / count for key in every}

    return key_moments


def with_anchors(moments: dict, anchors: set, weight: float, edits: list, anchor_weight: float) -> dict:
    """`C + L / (w T) Σ x xᵀ` over the anchors' answer keys, per layer."""
    out = {}
    for key, matrix in moments.items():
        tokens = sum(int(edit.info.extra[SOLVE_POSITIONS][key].numel()) for edit in edits if key in edit.deltas)
        x = torch.cat([PRESERVED["keys"][b][0][key][PRESERVED["keys"][b][1] == r] for b, r in sorted(anchors)])
        out[key] = matrix + (anchor_weight / (weight * max(tokens, 1))) * (x.T @ x).to(matrix)
    return out


@torch.no_grad()
def broken_facts(tuner: LimeModel) -> set:
    """The preserved facts the unedited model knew and the model does not get right now, as (batch, row)."""
    out = set()
    for b, (batch, known) in enumerate(zip(PRESERVED["batches"], PRESERVED["known"], strict=True)):
        now = torch.tensor(target_logits(tuner.model, batch, "masked_lm").row_correct())
        out |= {(b, r) for r in (known & ~now).nonzero()[:, 0].tolist()}
    return out


def anchored_refit(anchor_weight: float):
    """`LimeModel._refit_until_held` replaced: the broken preserved facts protected at the next fit."""

    def refit_until_held(self: LimeModel, edits: list, state: Any, preserve: dict, weight: float | None) -> None:
        w = DEFAULT_REFIT_WEIGHT if weight is None else weight
        anchors: set = set()
        for fit in range(state.rounds):
            for edit, deltas in zip(edits, state.own, strict=True):
                edit.deltas = dict(deltas)
            moments = with_anchors(preserve, anchors, w, edits, anchor_weight) if anchors else preserve
            refit_layers(self, edits, state.batches, moments, weight, row_weights=state.rows, singles=state.singles)
            for edit in edits:
                edit.apply()
            held = self._rows_held(state.batches)
            new = broken_facts(self) - anchors
            print(f"fit {fit}: {sum(int(h.sum()) for h in held)} held, {len(anchors)} anchors, {len(new)} newly "
                  "broken", file=sys.stderr)  # fmt: skip
            if fit == state.rounds - 1 or (all(bool(h.all()) for h in held) and not new):
                return
            anchors |= new
            for edit in reversed(edits):
                edit.revert()
            state.boost(held)

    return refit_until_held


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=["answer_moments", "anchors"])
    parser.add_argument("--beta", type=float, default=0.5, help="answer_moments: the answer positions' share of C.")
    parser.add_argument("--anchor_weight", type=float, default=1.0, help="anchors: L, per key.")
    args, rest = parser.parse_known_args(argv)
    if args.variant == "answer_moments":
        LimeEditor.key_moments = answer_moments(args.beta)
    else:
        library = LimeEditor.key_moments

        def key_moments(self: LimeEditor, facts: list, batch_size: int = 32, max_length: int = 128) -> dict:
            read_preserved(self, facts, max_length, known=True)
            return library(self, facts, batch_size, max_length)

        LimeEditor.key_moments = key_moments
        LimeModel._refit_until_held = anchored_refit(args.anchor_weight)
    many_edits.main(rest)


if __name__ == "__main__":
    main()
