"""`refit_layers`: many MEND edits refitted layer by layer in forward order, each layer on the inputs the refitted
layers below give, against the single edits' paths and the preserved keys; and `edit_many`'s refits that weight up
the requests that did not hold."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import pytest
import torch
from test_edit_many import REQUESTS, mend_editor, unchanged, weights
from test_preserve import KEEP

from hf_lime.deltas import SOLVE_KEYS, SOLVE_POSITIONS
from hf_lime.head import target_positions
from hf_lime.prefix_cache import optional_prefix_cache
from hf_lime.tuner import refit
from hf_lime.tuner.merge import PRESERVE_EPS
from hf_lime.tuner.model import LimeModel
from hf_lime.tuner.refit import refit_layers


def _prepared(editor, requests=REQUESTS):
    """Each request's own MEND edit (computed, not applied) and its batch."""
    tuner = editor.model.base_model
    _, examples = editor.check_requests(requests)
    batches = [editor._padded([example]) for example in examples]
    languages = [r[-1] if isinstance(r, tuple) else r["language"] for r in requests]
    return [tuner.prepare_edit(b, lang) for b, lang in zip(batches, languages, strict=True)], batches


def _layer_io(editor, batch, deltas_of=()):
    """Per layer key, `(inputs, outputs)` at the attended tokens of `batch`, with the edits `deltas_of` applied."""
    layers = editor.model.base_model.lime_layers
    applied = [edit.apply() for edit in deltas_of]
    try:
        with ExitStack() as stack, torch.no_grad():
            records = {key: stack.enter_context(layer.capture()) for key, layer in layers.items()}
            editor.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for edit in reversed(applied):
            edit.revert()
    keep = batch["attention_mask"].reshape(-1).bool()
    flat = {key: [r[0].inputs.reshape(-1, r[0].inputs.shape[-1])[keep], r[0].outputs.reshape(
        -1, r[0].outputs.shape[-1])[keep]] for key, r in records.items()}  # fmt: skip
    return {key: (x.double(), o.double()) for key, (x, o) in flat.items()}


def _copy(edit):
    import copy

    twin = copy.copy(edit)
    twin.deltas = dict(edit.deltas)
    return twin


def test_one_edit_refitted_without_preservation_follows_its_own_mend_path():
    """One request, `w = 0`, every token weighted 1 and fewer key tokens than a layer is wide: the refitted update
    gives every key token, at every layer, the output the plain MEND edit gives it."""
    editor = mend_editor()
    before = weights(editor)
    (edit,), (batch,) = _prepared(editor, REQUESTS[:1])
    plain = _copy(edit)
    moments = editor.key_moments(KEEP)
    refit_layers(editor.model.base_model, [edit], [batch], moments, weight=0.0, context_weight=1.0)
    expected, got = _layer_io(editor, batch, [plain]), _layer_io(editor, batch, [edit])
    for key in edit.deltas:
        positions = edit.info.extra[SOLVE_POSITIONS][key]
        assert positions.numel() <= editor.model.base_model.lime_layers[key].in_features
        torch.testing.assert_close(got[key][1][positions], expected[key][1][positions], rtol=1e-4, atol=1e-5)
    assert unchanged(editor, before)


@pytest.mark.parametrize("context_weight", [1.0, 0.1])
def test_refit_solves_the_weighted_normal_equations_on_the_refitted_inputs(context_weight):
    """Layer by layer: ΔW (X'ᵀSX' + w T C + εI) = V S X', with X' the key tokens' inputs under the refitted layers
    below, V the single edits' layer outputs less W X', S 1 at answer positions and `context_weight` elsewhere,
    times the row weights."""
    editor = mend_editor()
    tuner = editor.model.base_model
    edits, batches = _prepared(editor)
    singles = [_layer_io(editor, b, [_copy(e)]) for e, b in zip(edits, batches, strict=True)]
    moments = editor.key_moments(KEEP)
    rows = [torch.tensor([1.0 + i]) for i in range(len(edits))]
    refit_layers(tuner, edits, batches, moments, weight=2.0, context_weight=context_weight, row_weights=rows)
    refitted = [_layer_io(editor, b, edits) for b in batches]  # a layer's inputs do not depend on it or above
    for key, layer in tuner.lime_layers.items():
        X, V, S = [], [], []
        for edit, batch, single, now, row in zip(edits, batches, singles, refitted, rows, strict=True):
            positions = edit.info.extra[SOLVE_POSITIONS][key]
            x = now[key][0][positions]
            X.append(x)
            V.append(single[key][1][positions] - layer.base_layer(x.float()).double())
            answer = target_positions("masked_lm", batch["labels"]).reshape(-1)[
                batch["attention_mask"].reshape(-1).bool()
            ]
            S.append(torch.where(answer[positions], 1.0, context_weight).double() * row)
        X, V, S = torch.cat(X), torch.cat(V).T, torch.diag(torch.cat(S))
        total = sum(edit.deltas[key].dense().double() for edit in edits)
        normal = X.T @ S @ X + 2.0 * X.shape[0] * moments[key]
        normal = normal + PRESERVE_EPS * normal.diagonal().abs().mean() * torch.eye(normal.shape[0]).double()
        assert (total @ normal - V @ S @ X).norm() <= 1e-3 * (V @ S @ X).norm()
        for edit in edits:  # each edit keeps its own tokens' columns: they revert one by one
            assert edit.deltas[key].A.shape[0] == edit.info.extra[SOLVE_KEYS][key][0].shape[0]


def test_refit_needs_mend_keys_and_checks_its_weight():
    editor = mend_editor()
    edits, batches = _prepared(editor, REQUESTS[:1])
    moments = editor.key_moments(KEEP)
    with pytest.raises(ValueError, match="preserve_weight"):
        refit_layers(editor.model.base_model, edits, batches, moments, weight=-1.0)
    with pytest.raises(ValueError, match="context_weight"):
        refit_layers(editor.model.base_model, edits, batches, moments, context_weight=-0.1)
    del edits[0].info.extra[SOLVE_POSITIONS]
    with pytest.raises(ValueError, match="needs MEND edits"):
        refit_layers(editor.model.base_model, edits, batches, moments)


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_edit_many_refits_with_the_failed_requests_weighted_up(monkeypatch, mode):
    """While a request does not hold, all requests are refitted with the failed ones' weight times FAILED_BOOST
    (`REFIT_ROUNDS` fits at most in a batch, `SEQUENCE_REFIT_ROUNDS` at each step of a sequence), never above what
    one call reaches; in a sequence a new request starts at 1 and the earlier ones keep their weights. The group then
    reverts bit for bit."""
    rounds = refit.REFIT_ROUNDS if mode == "batch" else refit.SEQUENCE_REFIT_ROUNDS
    editor = mend_editor()
    before = weights(editor)
    calls: list[torch.Tensor] = []
    helds: list[torch.Tensor] = []
    real = refit.refit_layers

    def recording(*args, row_weights=None, **kwargs):
        calls.append(torch.cat([r.clone() for r in row_weights]))
        return real(*args, row_weights=row_weights, **kwargs)

    real_held = LimeModel._rows_held

    def recording_held(self, batches):
        held = real_held(self, batches)
        helds.append(torch.cat(held))
        return held

    monkeypatch.setattr("hf_lime.tuner.model.refit_layers", recording)
    monkeypatch.setattr(LimeModel, "_rows_held", recording_held)
    group = editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=KEEP, preserve_weight=1e4)  # cannot hold
    assert not bool(helds[0].all()) and len(calls) > (1 if mode == "batch" else len(REQUESTS))
    assert bool((calls[0] == 1).all())
    fits, cap = 1, refit.FAILED_BOOST ** (rounds - 1)
    for (weights_now, held), weights_next in zip(zip(calls, helds, strict=True), calls[1:], strict=False):
        boosted = (weights_now * torch.where(held, 1.0, refit.FAILED_BOOST).double()).clamp_max(cap)
        if len(weights_next) == len(weights_now):  # another fit of the same requests
            assert not bool(held.all()) and fits < rounds
            torch.testing.assert_close(weights_next, boosted)
            fits += 1
        else:  # a new request in the sequence
            assert bool(held.all()) or fits == rounds
            torch.testing.assert_close(weights_next, torch.cat([weights_now, torch.ones(1).double()]))
            fits = 1
    assert float(torch.cat(calls).max()) <= cap
    if mode == "batch":  # never holds: every fit is made
        assert len(calls) == rounds
    group.revert()
    assert unchanged(editor, before)


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_edit_many_refits_read_through_a_prefix_cache_with_the_same_edits(monkeypatch, mode):
    """`LimeEditor.edit_many` runs under a frozen-prefix cache: the refits' reads of the edit batches skip the frozen
    lower blocks (the cache serves rows again and again) and give the same edits, up to float rounding, as the same
    call without a cache."""
    editor = mend_editor()
    caches = []

    @contextmanager
    def recording(model):
        with optional_prefix_cache(model) as cache:
            caches.append(cache)
            yield cache

    def deltas_of(group):
        return [{key: delta.dense() for key, delta in edit.deltas.items()} for edit in group.edits]

    monkeypatch.setattr("hf_lime.editor.optional_prefix_cache", recording)
    group = editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=KEEP, preserve_weight=1.0)
    cached, held = deltas_of(group), group.held
    group.revert()
    assert len(caches) == 1 and caches[0] is not None and caches[0].hits > caches[0].misses > 0
    monkeypatch.setattr("hf_lime.editor.optional_prefix_cache", lambda model: nullcontext())
    group = editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=KEEP, preserve_weight=1.0)
    assert group.held == held
    for with_cache, without in zip(cached, deltas_of(group), strict=True):
        for key, delta in without.items():
            torch.testing.assert_close(with_cache[key], delta, rtol=1e-4, atol=1e-6)
    group.revert()


def test_row_groups_join_consecutive_batches_up_to_the_row_bound():
    batches = [{"input_ids": torch.zeros(rows, 3)} for rows in (2, 3, 1, 5, 1)]
    assert refit.row_groups(batches, max_rows=4) == [slice(0, 1), slice(1, 3), slice(3, 4), slice(4, 5)]
    assert refit.row_groups(batches, max_rows=100) == [slice(0, 5)]
    assert refit.row_groups([], max_rows=4) == []


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_a_refit_that_makes_the_outputs_non_finite_is_refused_and_nothing_is_left_applied(mode):
    editor = mend_editor()
    moments = editor.key_moments(KEEP)
    with torch.no_grad():
        editor.model.base_model.edit_lrs.log_lrs.fill_(80.0)  # finite factors, inf outputs
    before = weights(editor)
    with pytest.raises(ValueError, match="non-finite"):
        editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=moments)
    assert editor.model.base_model.applied_edit_ids == []
    assert unchanged(editor, before)
