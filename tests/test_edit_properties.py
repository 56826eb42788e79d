"""Property-based tests: random sequences of edit / stack / revert / merge / merge_adapter / unmerge_adapter /
revert_all on the five tiny families. The model always equals the base plus the ΔW of its live (applied or merged)
edits, and once everything is reverted it is the base again: bit for bit when nothing was ever merged."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FAMILIES, build_model, make_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import get_peft_model

import hf_lime  # noqa: F401  (registers the method)
from hf_lime import LimeConfig

OPERATIONS = ("edit", "edit", "revert", "merge", "merge_adapter", "unmerge_adapter", "revert_all")


def effective_weights(model) -> dict[str, torch.Tensor]:
    """What each edited layer computes, as one matrix: its weight plus the deltas it adds on top."""
    weights = {}
    for key, layer in model.base_model.lime_layers.items():
        weight = layer.linear_weight().detach().clone()
        for edit_id in layer.applied_edit_ids:
            weight += layer._applied[edit_id].dense()
        weights[key] = weight
    return weights


def expected_weights(base: dict[str, torch.Tensor], edits) -> dict[str, torch.Tensor]:
    expected = {key: weight.clone() for key, weight in base.items()}
    for edit in edits:
        if edit.state in ("applied", "merged"):
            for key, delta in edit.deltas.items():
                expected[key] += delta.dense()
    return expected


def run_sequence(family: str, operations: list[tuple[str, int]]) -> None:
    task = FAMILIES[family].task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Conv1D notice, "reverting a merged edit" rounding notice
        model = get_peft_model(build_model(family), LimeConfig(languages=["en", "fr"], edit_lr_init=1e-2))
        base = effective_weights(model)
        edits, merged_ever = [], False
        for operation, choice in operations:
            live = [e for e in edits if e.state in ("applied", "merged")]
            if operation == "edit":
                edits.append(model.base_model.edit(make_batch(task, seed=choice), language=["en", "fr"][choice % 2]))
            elif operation == "revert" and live:
                live[choice % len(live)].revert()
            elif operation == "merge" and live:
                live[choice % len(live)].merge()
                merged_ever = True
            elif operation == "merge_adapter":
                model.merge_adapter()
                merged_ever = merged_ever or any(e.state == "merged" for e in edits)
            elif operation == "unmerge_adapter":
                model.unmerge_adapter()
            elif operation == "revert_all":
                model.base_model.revert_all()
            now, want = effective_weights(model), expected_weights(base, edits)
            for key in base:
                torch.testing.assert_close(now[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{operation}: {key}")
        for edit in edits:
            if edit.state in ("applied", "merged"):
                edit.revert()
        final = effective_weights(model)
    for key, weight in base.items():
        if merged_ever:
            torch.testing.assert_close(final[key], weight, rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(final[key], weight), key


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 7)), min_size=1, max_size=8))
def test_random_edit_sequences_keep_the_model_consistent(family, operations):
    run_sequence(family, operations)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=8, deadline=None)
@given(operations=st.lists(st.tuples(st.sampled_from(("edit", "revert", "revert_all")), st.integers(0, 7)),
                           min_size=1, max_size=8))  # fmt: skip
def test_without_merges_reverting_everything_is_bit_exact(family, operations):
    run_sequence(family, operations)
