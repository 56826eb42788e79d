"""Preserving what many edits should leave alone: `key_moments` (the mean `x xᵀ` of the edited layers' inputs) and
`preserve_merge` (MEND's per-token targets fitted by least squares against those keys, MEMIT's form)."""

from __future__ import annotations

import pytest
import torch
from test_edit_many import REQUESTS, dense, mend_editor, unchanged, weights

from hf_lime.deltas import SOLVE_KEYS
from hf_lime.tuner.merge import PRESERVE_EPS, preserve_merge
from hf_lime.tuner.preserve import key_moments
from hf_lime.tuner.refit import refit_layers

KEEP = [
    ("Paris is in [MASK] .", "France"),
    ("Berlin ist in [MASK] .", "Deutschland"),
    ("Rome is in [MASK] .", "Italy"),
]


def batches(editor, facts):
    return [editor._padded([editor._encode(prompt, answer, 32) for prompt, answer in facts])]


def layer_inputs(editor, facts) -> dict[str, torch.Tensor]:
    """Every edited layer's input at every token of each fact run alone (no padding), by forward hooks."""
    seen: dict[str, list[torch.Tensor]] = {}
    layers = editor.model.base_model.lime_layers
    hooks = [layer.register_forward_pre_hook(lambda _m, a, k=key: seen.setdefault(k, []).append(a[0][0].detach()))
             for key, layer in layers.items()]  # fmt: skip
    try:
        with torch.no_grad():
            for fact in facts:
                batch = batches(editor, [fact])[0]
                editor.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return {key: torch.cat(values).double() for key, values in seen.items()}


def test_key_moments_are_the_mean_second_moment_over_attended_tokens_only():
    editor = mend_editor()
    padded = batches(editor, KEEP)[0]
    assert not padded["attention_mask"].all()  # the facts differ in length: padding to ignore
    moments = editor.key_moments(KEEP, batch_size=2)
    assert sorted(moments) == sorted(editor.model.base_model.lime_layers)
    for key, x in layer_inputs(editor, KEEP).items():
        torch.testing.assert_close(moments[key], x.T @ x / x.shape[0], rtol=1e-5, atol=1e-7)
        assert moments[key].dtype == torch.float64
    with pytest.raises(ValueError, match="Fact 1: expected a \\(prompt, answer\\) pair"):
        editor.key_moments([KEEP[0], ("only a prompt",)])
    with pytest.raises(ValueError, match="at least one fact"):
        editor.key_moments([])


def _own_targets(edits) -> dict[str, torch.Tensor]:
    """Per layer, `B (G ⊙ M)` of MEND's own factors: what each edit token would see from its own request alone."""
    targets: dict[str, list[torch.Tensor]] = {}
    for edit in edits:
        for key, delta in edit.deltas.items():
            x, rows = edit.info.extra[SOLVE_KEYS][key]
            G = delta.A.double() @ x.double().T
            targets.setdefault(key, []).append(delta.B.double() @ (G * (rows[:, None] == rows[None, :])))
    return {key: torch.cat(parts, 1) for key, parts in targets.items()}


def _prepared(editor):
    tuner = editor.model.base_model
    _, examples = editor.check_requests(REQUESTS)
    return [tuner.prepare_edit(editor._padded([e]), request[-1] if isinstance(request, tuple) else request["language"])
            for e, request in zip(examples, REQUESTS, strict=True)]  # fmt: skip


@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_preserve_merge_solves_the_least_squares_normal_equations(weight):
    """ΔW (XᵀX + w T C + εI) = V X: X the edit tokens' raw inputs, V their own MEND targets, C the key moments."""
    editor = mend_editor()
    edits = _prepared(editor)
    targets = _own_targets(edits)
    moments = key_moments(editor.model.base_model, batches(editor, KEEP))
    preserve_merge(edits, moments, weight)
    for key, V in targets.items():
        X = torch.cat([edit.info.extra[SOLVE_KEYS][key][0] for edit in edits]).double()
        total = sum(edit.deltas[key].dense().double() for edit in edits)
        normal = X.T @ X + weight * X.shape[0] * moments[key]
        eye = torch.eye(normal.shape[0], dtype=normal.dtype)
        normal = normal + PRESERVE_EPS * normal.diagonal().abs().mean() * eye
        residual = total @ normal - V @ X
        assert residual.norm() <= 1e-4 * (V @ X).norm()


def test_a_larger_preserve_weight_changes_the_preserved_keys_less():
    editor = mend_editor()
    keys = layer_inputs(editor, KEEP)
    moments = editor.key_moments(KEEP)
    change = []
    for weight in (0.0, 10.0, 1000.0):
        edits = _prepared(editor)
        preserve_merge(edits, moments, weight)
        total = dense(edits)
        change.append(sum(float((total[k].double() @ x.T).norm()) for k, x in keys.items()))
    assert change[0] > change[1] > change[2]


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_edit_many_with_preserve_reverts_bit_for_bit_and_checks_its_arguments(mode):
    editor = mend_editor()
    before = weights(editor)
    plain = editor.edit_many(REQUESTS, mode=mode, combine="solve")
    plain_total = {k: v.clone() for k, v in dense(plain.edits).items()}
    plain.revert()
    group = editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=KEEP, preserve_weight=5.0)
    assert len(group.held) == len(REQUESTS)
    assert any(not torch.allclose(dense(group.edits)[k], plain_total[k]) for k in plain_total)
    group.revert()
    assert unchanged(editor, before)
    with pytest.raises(ValueError, match="use it with combine='solve'"):
        editor.edit_many(REQUESTS, mode=mode, preserve=KEEP)
    bad = {key: torch.eye(3, dtype=torch.float64) for key in editor.model.base_model.lime_layers}
    with pytest.raises(ValueError, match="key moment for layer"):
        editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=bad)
    with pytest.raises(ValueError, match="preserve_weight"):
        editor.edit_many(REQUESTS, mode=mode, combine="solve", preserve=KEEP, preserve_weight=-1)
    assert unchanged(editor, before)


def test_a_single_edit_with_preserve_is_the_merge_of_its_mend_factors_and_reverts():
    editor = mend_editor()
    before = weights(editor)
    moments = editor.key_moments(KEEP)
    tuner = editor.model.base_model
    _, examples = editor.check_requests(REQUESTS[:1])
    expected = tuner.prepare_edit(editor._padded(examples), "en")
    preserve_merge([expected], moments, 2.0)
    edit = editor.edit("Dante was born in [MASK] .", "Florence", language="en", preserve=moments, preserve_weight=2.0)
    for key, delta in edit.deltas.items():
        torch.testing.assert_close(delta.dense(), expected.deltas[key].dense(), rtol=1e-4, atol=1e-7)
    edit.revert()
    assert unchanged(editor, before)
    with pytest.raises(ValueError, match="use it with combine='solve'"):
        editor.edit("Dante was born in [MASK] .", "Florence", language="en", combine="sum", preserve=moments)
    assert unchanged(editor, before)


def test_a_sequence_with_preserve_refits_every_edit_from_its_own_mend_factors(monkeypatch):
    """`mode="sequential"` with `preserve`: each edit is computed on the model holding the earlier ones (their refitted
    form), and after the last one the group's deltas are `refit_layers` of every edit's own MEND factors (one fit per
    step here: the refits of requests that did not hold are tested in test_refit.py)."""
    import copy

    from hf_lime.tuner.model import LimeModel

    editor = mend_editor()
    before = weights(editor)
    moments = editor.key_moments(KEEP)
    made, applied_before, batches = [], [], []
    real = LimeModel.prepare_edit

    def recording(self, *args, **kwargs):
        applied_before.append(len(self.applied_edit_ids))
        batches.append(args[0])
        edit = real(self, *args, **kwargs)
        made.append(copy.copy(edit))
        made[-1].deltas = dict(edit.deltas)
        return edit

    monkeypatch.setattr(LimeModel, "prepare_edit", recording)
    monkeypatch.setattr("hf_lime.tuner.model.SEQUENCE_REFIT_ROUNDS", 1)
    group = editor.edit_many(REQUESTS, mode="sequential", combine="solve", preserve=moments, preserve_weight=2.0)
    assert applied_before == list(range(len(REQUESTS)))  # edit k was computed with the k earlier ones applied
    assert all(edit.state == "applied" for edit in group.edits)
    group.revert()
    assert unchanged(editor, before)
    refit_layers(editor.model.base_model, made, batches, moments, 2.0)
    for edit, expected in zip(group.edits, made, strict=True):
        for key, delta in edit.deltas.items():
            torch.testing.assert_close(delta.dense(), expected.deltas[key].dense(), rtol=1e-4, atol=1e-7)


def test_fact_pairs_are_every_language_s_prompt_and_answer_with_a_mask():
    from hf_lime.data.items import fact_pairs

    rows = [{"languages": ["en", "fr"], "prompts": ["X is in [Y] .", "X est en [Y] ."], "targets": ["Asia", "Asie"]},
            {"languages": ["en", "fr"], "prompts": ["Y is in [Y] .", ""], "targets": ["Europe", ""]}]  # fmt: skip
    assert fact_pairs(rows) == [
        ("X is in [MASK] .", "Asia"),
        ("X est en [MASK] .", "Asie"),
        ("Y is in [MASK] .", "Europe"),
    ]
    assert fact_pairs(rows, ["fr"]) == [("X est en [MASK] .", "Asie")]
