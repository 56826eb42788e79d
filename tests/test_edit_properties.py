"""Property-based tests: random sequences of edit / stack / revert / merge / merge_adapter / unmerge_adapter /
revert_all on the five tiny families. The model always equals the base plus the ΔW of its live (applied or merged)
edits, and once everything is reverted it is the base again: bit for bit when nothing was ever merged. Handles
(edits and groups of edits) report their state honestly: what a state forbids (merging or exporting a reverted edit,
applying a merged one) raises and changes nothing."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from conftest import FAMILIES, build_model, make_batch
from hypothesis import HealthCheck, example, given, settings
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


# ------------------------------------------------------------------------------------------------ honest handles
HANDLE_OPERATIONS = ("edit", "edit", "edit_many", "revert", "revert_all", "merge", "export", "apply")
ALLOWED = {"merge": ("applied", "merged"), "export": ("applied", "merged"), "apply": ("applied", "reverted")}
NO_OPS = {"apply": "applied", "revert": "reverted", "merge": "merged"}  # operation -> the state where it does nothing


class Replay:
    """The reference the model is checked against, kept from the operations alone: each handle's expected state
    and its dense ΔW per layer, and a plain copy of the base model that gets base + ΔW of the live handles."""

    def __init__(self, family: str, model) -> None:
        self.reference = build_model(family)
        self.layers = model.base_model.lime_layers
        self.base = {key: layer.linear_weight().detach().clone() for key, layer in self.layers.items()}
        self.handles: list = []
        self.states: list[str] = []
        self.deltas: list[dict[str, torch.Tensor]] = []
        self.merged_ever = False

    def add(self, handle) -> None:
        edits = handle.edits if hasattr(handle, "edits") else [handle]
        summed = {key: torch.zeros_like(weight) for key, weight in self.base.items()}
        for edit in edits:
            for key, delta in edit.deltas.items():
                summed[key] += delta.dense()
        self.handles.append(handle)
        self.states.append("applied")
        self.deltas.append(summed)

    def expected(self, states: tuple[str, ...]) -> dict[str, torch.Tensor]:
        weights = {key: weight.clone() for key, weight in self.base.items()}
        for state, deltas in zip(self.states, self.deltas, strict=True):
            if state in states:
                for key in weights:
                    weights[key] += deltas[key]
        return weights

    @torch.no_grad()
    def reference_logits(self, inputs: dict) -> torch.Tensor:
        modules = dict(self.reference.named_modules())
        for key, weight in self.expected(("applied", "merged")).items():
            module = modules[key.replace("-", ".")]
            module.weight.copy_(weight.T if self.layers[key].fan_in_fan_out else weight)
        return self.reference(**inputs).logits


def snapshot(model) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    return weights, {key: layer.applied_edit_ids for key, layer in model.base_model.lime_layers.items()}


def assert_unchanged(model, before) -> None:
    weights, applied = snapshot(model)
    assert applied == before[1]
    assert all(torch.equal(weights[key], before[0][key]) for key in weights)


def check_export(handle, deltas: dict[str, torch.Tensor], folder) -> None:
    from safetensors.torch import load_file

    tensors = load_file(handle.to_lora(folder, base_model_name_or_path="org/tiny") / "adapter_model.safetensors")
    for key, delta in deltas.items():
        prefix = f"base_model.model.{key.replace('-', '.')}"
        product = tensors[f"{prefix}.lora_B.weight"] @ tensors[f"{prefix}.lora_A.weight"]
        torch.testing.assert_close(product, delta, rtol=1e-4, atol=1e-5)


def step(model, replay: Replay, task: str, operation: str, choice: int, folder) -> None:
    """One operation on the model, mirrored in the replay; operations the state forbids must raise and change
    nothing (bit for bit)."""
    tuner, language = model.base_model, ["en", "fr"][choice % 2]
    if operation == "edit":
        replay.add(tuner.edit(make_batch(task, seed=choice), language=language))
        return
    if operation == "edit_many":
        batches = [make_batch(task, seed=choice), make_batch(task, batch_size=1, seed=choice + 10)]
        mode = ("batch", "sequential")[choice % 2]
        replay.add(tuner.edit_many(batches, [language, ["fr"]], mode=mode))
        return
    if operation == "revert_all":
        tuner.revert_all()
        replay.states = ["reverted" if s == "applied" else s for s in replay.states]
        return
    if not replay.handles:
        return
    index = choice % len(replay.handles)
    handle, state = replay.handles[index], replay.states[index]
    if operation in ALLOWED and state not in ALLOWED[operation]:
        check_refused(model, handle, operation, state, folder)
    elif NO_OPS.get(operation) == state:
        before = snapshot(model)
        getattr(handle, operation)()  # already in that state: nothing changes
        assert_unchanged(model, before)
    elif operation == "export":
        check_export(handle, replay.deltas[index], folder)
        shutil.rmtree(folder)
    else:
        getattr(handle, operation)()
        replay.states[index] = {"revert": "reverted", "merge": "merged", "apply": "applied"}[operation]
        replay.merged_ever |= operation == "merge"


def check_refused(model, handle, operation: str, state: str, folder) -> None:
    """`operation` is not allowed in `state`: a `ValueError` naming both, and nothing changed or written."""
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"Cannot {operation} .*{state}"):
        if operation == "export":
            handle.to_lora(folder, base_model_name_or_path="org/tiny")
        else:
            getattr(handle, operation)()
    assert_unchanged(model, before)
    assert not folder.exists()


def check_against_replay(model, replay: Replay, inputs: dict, operation: str) -> None:
    assert [handle.state for handle in replay.handles] == replay.states, operation
    effective, weights = effective_weights(model), replay.expected(("applied", "merged"))
    merged = replay.expected(("merged",))
    for key, layer in model.base_model.lime_layers.items():
        torch.testing.assert_close(effective[key], weights[key], rtol=1e-4, atol=1e-5, msg=f"{operation}: {key}")
        torch.testing.assert_close(layer.linear_weight(), merged[key], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, replay.reference_logits(inputs), rtol=1e-4, atol=1e-4, msg=operation)


def run_handle_sequence(family: str, operations: list[tuple[str, int]]) -> None:
    import tempfile
    from pathlib import Path

    task = FAMILIES[family].task
    inputs = {k: v for k, v in make_batch(task, batch_size=3, seed=99).items() if k != "labels"}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # Conv1D notice, "reverting a merged edit" rounding notice
        model = get_peft_model(build_model(family), LimeConfig(languages=["en", "fr"], edit_lr_init=1e-2))
        replay = Replay(family, model)
        with torch.no_grad():
            clean = model(**inputs).logits
        base = snapshot(model)
        for operation, choice in operations:
            step(model, replay, task, operation, choice, Path(tmp) / "lora")
            check_against_replay(model, replay, inputs, operation)
        for handle in replay.handles:
            handle.revert()
        if not replay.merged_ever:  # everything reverted, nothing ever merged: the base model, bit for bit
            assert_unchanged(model, base)
            with torch.no_grad():
                assert torch.equal(model(**inputs).logits, clean)


# every path at least once: refused merge/export of reverted handles, apply of a merged one, no-ops, groups
EVERY_PATH = [("edit", 0), ("edit_many", 1), ("revert_all", 0), ("merge", 0), ("export", 1), ("apply", 0),
              ("apply", 0), ("merge", 0), ("apply", 0), ("merge", 0), ("export", 0), ("revert", 0), ("revert", 0),
              ("edit_many", 2), ("export", 3), ("merge", 3), ("revert", 3)]  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(st.tuples(st.sampled_from(HANDLE_OPERATIONS), st.integers(0, 7)), min_size=1,
                           max_size=10))  # fmt: skip
@example(operations=EVERY_PATH)
def test_handles_tell_their_state_and_refuse_what_it_forbids(family, operations):
    """Random edit / edit_many / revert / revert_all / merge / export / apply over several handles (single edits and
    groups): after each step every handle's state, the weights and the outputs match the replayed reference; merging
    or exporting a reverted handle, and applying a merged one, raise and leave the model bit-identical."""
    run_handle_sequence(family, operations)
