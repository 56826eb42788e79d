"""`LimeEditor.edit_many`: requests checked before anything is applied, a batch's ΔW against MEND's definition,
sequences computed on the edited model, which edits held, all-or-nothing application, and the group's states."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, make_batch
from helpers_tokenizers import build_byte_bpe_tokenizer, build_wordpiece_tokenizer
from peft import get_peft_model
from testing_common import perturb_trainables
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from hf_lime import EditGroup, LimeConfig, LimeEditor
from hf_lime.data.encoding import target_token_ids
from hf_lime.edit_requests import RequestError, parse_requests

LANGS = ["en", "fr", "de"]
FT = {"editor": "ft", "ft_steps": 40, "ft_lr": 0.05, "ft_optimizer": "adam", "use_lime_mask": False, "languages": []}
NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}
PICASSO = "Picasso was born in [MASK] ."
REQUESTS = [
    ("Dante was born in [MASK] .", "Florence", "en"),
    {"prompt": "Goethe ist in [MASK] geboren .", "answer": "Berlin", "language": "de"},
    ("La capitale de la France est [MASK] .", "Lyon", "fr"),
    ("The capital of Italy is [MASK] .", "Rome", "en"),
]


def tiny_bert(tokenizer, cls=BertForMaskedLM, **kwargs):
    torch.manual_seed(0)
    sizes = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, attn_implementation="eager", **sizes,
                        **kwargs)  # fmt: skip
    return cls(config).eval()


def mlm_editor(**config) -> LimeEditor:
    tokenizer = build_wordpiece_tokenizer()
    config.setdefault("languages", LANGS)
    return LimeEditor.from_base_model(tiny_bert(tokenizer), LimeConfig(**config), tokenizer)


def mend_editor() -> LimeEditor:
    """An untrained MEND editor with language masks, its networks moved off their identity start."""
    editor = mlm_editor(mend_rank=4, edit_lr_init=1e-2, mask_scope="language")
    perturb_trainables(editor.model, scale=0.05)
    editor.model.eval()
    return editor


def dense(edits) -> dict[str, torch.Tensor]:
    """The summed ΔW per layer of `edits`."""
    total: dict[str, torch.Tensor] = {}
    for edit in edits:
        for key, delta in edit.deltas.items():
            total[key] = total.get(key, 0) + delta.dense()
    return total


def weights(editor: LimeEditor) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in editor.model.state_dict().items()}


def unchanged(editor: LimeEditor, before: dict[str, torch.Tensor]) -> bool:
    after = editor.model.state_dict()
    return editor.model.base_model.applied_edit_ids == [] and all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------- batches
def test_a_mend_batch_is_the_sum_of_the_requests_edited_alone():
    """MEND normalises each request's gradients on their own and transforms each token on its own, so a padded batch
    of requests (chunked or not) has exactly the factors of the requests edited alone, concatenated."""
    editor = mend_editor()
    singles = []
    for request in parse_requests(REQUESTS):
        singles.append(editor.edit(request.prompt, request.answer, language=request.language))
        singles[-1].revert()
    group = editor.edit_many(REQUESTS)
    assert len(group.edits) == 1 and group.mode == "batch"
    batched = group.edits[0]
    for key, delta in batched.deltas.items():
        torch.testing.assert_close(delta.B, torch.cat([s.deltas[key].B for s in singles], 1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(delta.A, torch.cat([s.deltas[key].A for s in singles], 0), rtol=1e-4, atol=1e-6)
    expected = dense(singles)
    group.revert()
    chunked = editor.edit_many(REQUESTS, batch_size=3)  # two editor calls, both on the unedited model
    assert len(chunked.edits) == 2
    for key, total in dense(chunked.edits).items():
        torch.testing.assert_close(total, expected[key], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dense(group.edits)[key], expected[key], rtol=1e-4, atol=1e-6)
    chunked.revert()


def test_combine_mean_applies_the_mean_of_the_requests_updates_chunked_or_not():
    editor = mend_editor()
    before = weights(editor)
    summed = editor.edit_many(REQUESTS)
    expected = {key: total / len(REQUESTS) for key, total in dense(summed.edits).items()}
    summed.revert()
    for batch_size in (None, 3):  # every chunk divided by all four requests, not by its own rows
        group = editor.edit_many(REQUESTS, batch_size=batch_size, combine="mean")
        for key, total in dense(group.edits).items():
            torch.testing.assert_close(total, expected[key], rtol=1e-4, atol=1e-6)
        group.revert()
    with pytest.raises(ValueError, match="use it with mode='batch'"):
        editor.edit_many(REQUESTS, mode="sequential", combine="mean")
    with pytest.raises(ValueError, match=r"must be one of \['sum', 'mean', 'solve'\]"):
        editor.edit_many(REQUESTS, combine="median")
    with pytest.raises(ValueError, match="does not sum its rows"):
        mlm_editor(**{**FT, "languages": LANGS}).edit_many(REQUESTS[:1], combine="mean")
    assert unchanged(editor, before)


def _solve_system_holds(edits, ridge: float) -> None:
    """Per layer, over every edit: B' (G + λI) = B (G ⊙ M), with B the factors summed MEND would apply."""
    from hf_lime.deltas import SOLVE_KEYS

    for key in edits[0].deltas:
        A = torch.cat([e.deltas[key].A for e in edits]).double()
        X = torch.cat([e.info.extra[SOLVE_KEYS][key][0] for e in edits]).double()
        offsets = torch.cumsum(torch.tensor([0] + [int(e.info.extra[SOLVE_KEYS][key][1].max()) + 1 for e in edits]), 0)
        rows = torch.cat([e.info.extra[SOLVE_KEYS][key][1] + offsets[i] for i, e in enumerate(edits)])
        G = A @ X.T
        lam = ridge * G.diagonal().abs().mean()
        yield key, G, lam, rows == rows[:, None]


def test_combine_solve_gives_each_request_at_its_tokens_what_it_alone_would():
    """`combine="solve"` (hf_lime.tuner.merge): the output factors B' solve B' (G + λI) = B (G ⊙ M) across all
    requests, chunked or not; the input factors are MEND's own; one request alone is only shrunk by the ridge."""
    editor = mend_editor()
    before = weights(editor)
    summed = editor.edit_many(REQUESTS, batch_size=3)
    original = {key: torch.cat([e.deltas[key].B for e in summed.edits], 1).double() for key in summed.edits[0].deltas}
    summed.revert()
    totals = []
    for batch_size in (None, 3):
        group = editor.edit_many(REQUESTS, batch_size=batch_size, combine="solve")
        for key, G, lam, same in _solve_system_holds(group.edits, 0.1):
            solved = torch.cat([e.deltas[key].B for e in group.edits], 1).double()
            system = G + lam * torch.eye(G.shape[0], dtype=G.dtype)
            residual = solved @ system - original[key] @ (G * same)  # B' is stored in float32: a backward error
            assert residual.norm() <= 1e-5 * solved.norm() * system.norm()
            assert not torch.allclose(solved, original[key], rtol=1e-2)  # four requests: the merge changed B
        totals.append(dense(group.edits))
        group.revert()
    for key in totals[0]:  # the merge is over every request, not per chunk (padding differs: float rounding)
        scale = float(totals[0][key].abs().max())
        torch.testing.assert_close(totals[0][key], totals[1][key], rtol=1e-3, atol=1e-4 * scale)
    assert unchanged(editor, before)


def test_combine_solve_on_one_token_only_applies_the_ridge_and_is_refused_where_it_cannot_apply():
    from hf_lime.tuner.merge import solve_merge

    editor = mend_editor()
    tuner = editor.model.base_model
    batch = make_batch("masked_lm", batch_size=1, seq_len=6, seed=2, target=9)
    batch["input_ids"] = batch["input_ids"] % 50 + 5
    plain = tuner.prepare_edit(batch, "en")
    solved = tuner.prepare_edit(batch, "en", combine="solve")
    top = list(plain.deltas)[-1]  # the top block: only the target token has a gradient
    torch.testing.assert_close(solved.deltas[top].B, plain.deltas[top].B / 1.1, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="positive number"):
        solve_merge([plain], ridge=0)
    with pytest.raises(ValueError, match="does not sum its rows"):
        mlm_editor(**{**FT, "languages": LANGS}).edit_many(REQUESTS[:1], combine="solve")


def test_sequential_solve_fits_each_edit_to_leave_the_earlier_edits_tokens_alone(monkeypatch):
    """`mode="sequential", combine="solve"`: each edit's output factors solve the ridge normal equations
    B' (G Gᵀ + H Hᵀ + λI) = B (G ⊙ M) Gᵀ (B: MEND's factors of that edit, H: over the earlier edits' tokens); the
    group reverts bit for bit."""
    import hf_lime.tuner.model as tuner_model
    from hf_lime.deltas import SOLVE_KEYS

    mend_factors = []
    real = tuner_model.protect_merge

    def recording(edit, protected, ridge=None):
        mend_factors.append({key: delta.B.clone() for key, delta in edit.deltas.items()})
        return real(edit, protected, ridge)

    monkeypatch.setattr(tuner_model, "protect_merge", recording)
    editor = mend_editor()
    before = weights(editor)
    group = editor.edit_many(REQUESTS, mode="sequential", combine="solve")
    assert len(group.edits) == len(mend_factors) == len(REQUESTS)
    earlier: dict[str, list[torch.Tensor]] = {}
    for edit, factors in zip(group.edits, mend_factors, strict=True):
        for key, delta in edit.deltas.items():
            x, rows = edit.info.extra[SOLVE_KEYS][key]
            G = delta.A.double() @ x.double().T
            normal = G @ G.T
            if earlier.get(key):
                H = delta.A.double() @ torch.cat(earlier[key]).double().T
                normal = normal + H @ H.T
            system = normal + 0.1 * normal.diagonal().abs().mean() * torch.eye(normal.shape[0], dtype=normal.dtype)
            solved = delta.B.double()
            target = factors[key].double() @ (G * (rows[:, None] == rows[None, :])) @ G.T
            assert (solved @ system - target).norm() <= 1e-5 * solved.norm() * system.norm()
            earlier.setdefault(key, []).append(x)
    group.revert()
    assert unchanged(editor, before)


def test_a_sequence_computes_each_edit_on_the_model_holding_the_previous_ones():
    editor = mend_editor()
    group = editor.edit_many(REQUESTS[:3], mode="sequential")
    assert [len(e.info.languages) for e in group.edits] == [1, 1, 1]
    group.revert()
    by_hand = []
    for request in parse_requests(REQUESTS[:3]):
        by_hand.append(editor.edit(request.prompt, request.answer, language=request.language))  # on the previous
    for ours, theirs in zip(group.edits, by_hand, strict=True):
        for key, delta in ours.deltas.items():
            assert torch.equal(delta.dense(), theirs.deltas[key].dense())
    for edit in reversed(by_hand):
        edit.revert()
    alone = editor.edit(REQUESTS[1]["prompt"], REQUESTS[1]["answer"], language="de")
    key = next(iter(alone.deltas))
    assert not torch.allclose(alone.deltas[key].dense(), group.edits[1].deltas[key].dense())  # it saw edit 0
    alone.revert()


# ----------------------------------------------------------------------------------------------- held
def test_held_says_which_requests_the_model_answers():
    editor = mlm_editor(mend_rank=4)
    editor.model.base_model.edit_lrs.fill_(0.0)  # edits that change nothing: held is what the model already says
    current = editor.predict(REQUESTS[0][0])
    other = "Paris" if current != "Paris" else "Lyon"
    group = editor.edit_many([(REQUESTS[0][0], current, "en"), (REQUESTS[2][0], other, "fr")])
    assert group.held == [True, editor.predict(REQUESTS[2][0]) == other] and group.held[1] is False
    assert group.failed == [1]
    assert "held=1/2" in repr(group)
    group.revert()


def predicted(editor: LimeEditor, request) -> bool:
    """Whether `predict` gives the request's answer (as many masks or new tokens as the answer has tokens)."""
    if editor.task == "seq_cls":
        return editor.predict(request.prompt) == NLI_LABELS.get(request.answer, request.answer)
    n = len(target_token_ids(editor.tokenizer, request.answer))
    option = {"num_tokens": n} if editor.task == "masked_lm" else {"max_new_tokens": n}
    return editor.predict(request.prompt, **option) == request.answer


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_held_agrees_with_predict_for_masked_lms_classifiers_and_causal_lms(mode):
    tokenizer = build_wordpiece_tokenizer()
    mlm = LimeEditor.from_base_model(tiny_bert(tokenizer), LimeConfig(**FT), tokenizer)
    requests = [("Dante was born in [MASK] .", "Florence", None), ("Goethe was born in [MASK] .", "Paris", None)]
    labels = {"num_labels": 3, "id2label": NLI_LABELS, "label2id": {v: k for k, v in NLI_LABELS.items()}}
    classifier = LimeEditor.from_base_model(tiny_bert(tokenizer, BertForSequenceClassification, **labels),
                                            LimeConfig(**FT), tokenizer)  # fmt: skip
    pairs = [(("a man sleeps .", "a dog runs ."), "neutral", None), ({"prompt": ["a cat", "a dog"], "answer": 0,
             "language": None})]  # fmt: skip
    gpt_tokenizer = build_byte_bpe_tokenizer()
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt_tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, attn_implementation="eager")).eval()  # fmt: skip
    causal = LimeEditor.from_base_model(gpt2, LimeConfig(**FT), gpt_tokenizer)
    continuations = [("Dante was born in", "Lyon", None), ("Goethe was born in", "Paris", None)]
    for editor, reqs in ((mlm, requests), (classifier, pairs), (causal, continuations)):
        before = weights(editor)
        assert not any(predicted(editor, r) for r in parse_requests(reqs)), editor.task  # new answers only
        with editor.edit_many(reqs, mode=mode) as group:
            assert group.held == [predicted(editor, r) for r in parse_requests(reqs)], editor.task
            assert any(group.held), editor.task  # fine-tuning makes these tiny models give the new answers
        assert unchanged(editor, before)


# ----------------------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("Picasso was born in [MASK] .", "a request is a \\(prompt, answer, language\\) tuple"),
        ({"prompt": "x [MASK]", "answer": "Lyon"}, r"missing key\(s\) \['language'\]"),
        ({"prompt": "x [MASK]", "answer": "Lyon", "language": "en", "target": "x"}, r"unknown key\(s\) \['target'\]"),
        ((PICASSO, 3.5, "en"), "`answer` must be a string"),
        ((PICASSO, "Lyon", ""), "`language` must be a language code"),
        ((PICASSO, "Lyon", "xx"), r"unknown language 'xx'; this editor knows \['en', 'fr', 'de'\]"),
        ((PICASSO, "  ", "en"), "non-empty string"),
        (("Picasso was born in Paris .", "Lyon", "en"), "exactly one placeholder"),
        (("Picasso " * 70 + "[MASK] .", "Lyon", "en"), "reads at most 64"),
        (("The capital of Italy is [MASK] .", "Paris", "en"), "also request 1's, with another answer"),
    ],
)
def test_a_bad_request_is_named_by_its_index_and_nothing_is_applied(bad, match):
    editor = mlm_editor(mend_rank=4, edit_lr_init=1e-2)
    before, clean = weights(editor), editor.predict(REQUESTS[0][0])
    requests = [REQUESTS[0], REQUESTS[3], bad]
    for mode in ("batch", "sequential"):
        with pytest.raises(RequestError, match=f"^Request 2: .*{match}") as caught:
            editor.edit_many(requests, mode=mode)
        assert isinstance(caught.value, ValueError) and caught.value.index == 2
        assert unchanged(editor, before)
    assert editor.predict(REQUESTS[0][0]) == clean


def test_bad_arguments_are_refused():
    editor = mlm_editor(mend_rank=4)
    with pytest.raises(TypeError, match="non-empty list of edit requests"):
        editor.edit_many([])
    with pytest.raises(ValueError, match=r"`mode` must be one of \['batch', 'sequential'\]"):
        editor.edit_many(REQUESTS, mode="parallel")
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        editor.edit_many(REQUESTS, batch_size=0)
    with pytest.raises(TypeError, match="non-empty sequence of Edit"):
        EditGroup([])
    assert editor.model.base_model.applied_edit_ids == []


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_a_failure_midway_reverts_everything_applied_so_far(mode, monkeypatch):
    editor = mlm_editor(mend_rank=4, edit_lr_init=1e-2)
    before = weights(editor)
    tuner = editor.model.base_model
    apply_checked, calls = tuner._apply_checked, []

    def fail_third(edit, inputs):
        calls.append(edit)
        if len(calls) == 3:
            raise RuntimeError("the device ran out of memory")
        return apply_checked(edit, inputs)

    monkeypatch.setattr(tuner, "_apply_checked", fail_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        editor.edit_many(REQUESTS, mode=mode, batch_size=1)
    assert len(calls) == 3 and calls[0].state == calls[1].state == "reverted"
    assert unchanged(editor, before)


# ----------------------------------------------------------------------------------------------- the group
def test_the_group_reverts_exports_and_refuses_what_its_state_forbids(tmp_path):
    editor = mend_editor()
    editor.config.base_model_name_or_path = "org/tiny-bert"
    probe = [r[0] if isinstance(r, tuple) else r["prompt"] for r in REQUESTS]
    before, clean = weights(editor), editor.predict(probe)
    group = editor.edit_many(REQUESTS, mode="sequential")
    edited = editor.model.base_model.lime_layers
    assert group.state == "applied" and len(group.edits) == 4
    folder = editor.export_lora(group, tmp_path / "lora")
    assert (folder / "adapter_model.safetensors").is_file() and group.to_lora(tmp_path / "lora-2").is_dir()
    editor.revert_all()  # behind the group's back
    assert group.state == "reverted" and unchanged(editor, before)
    refused = tmp_path / "refused"
    for action in (group.merge, lambda: group.to_lora(refused), lambda: editor.export_lora(group, refused)):
        with pytest.raises(ValueError, match="reverted"):
            action()
        assert unchanged(editor, before) and not refused.exists()
    group.revert()  # idempotent
    assert unchanged(editor, before)
    group.apply()  # the same ΔWs again
    assert group.state == "applied" and len(editor.model.base_model.applied_edit_ids) == 4
    group.edits[1].revert()
    assert group.state == "mixed" and group.states == ["applied", "reverted", "applied", "applied"]
    with pytest.raises(ValueError, match=r"Cannot merge this group of edits: edits \[1\] of 4 are \['reverted'\]"):
        group.merge()
    assert len(editor.model.base_model.applied_edit_ids) == 3
    with group:
        group.apply()
    assert group.state == "reverted" and unchanged(editor, before) and editor.predict(probe) == clean
    group.apply().merge()
    assert group.state == "merged" and edited == editor.model.base_model.lime_layers
    with pytest.raises(ValueError, match="Cannot apply this group of edits: it is merged"):
        group.apply()


def test_the_tuner_checks_every_batch_before_applying_any():
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS, edit_lr_init=1e-2))
    tuner, good = model.base_model, make_batch("masked_lm")
    bad = {**good, "labels": good["labels"].float()}
    for mode in ("batch", "sequential"):
        with pytest.raises(TypeError, match="^Edit batch 1: `labels` must hold integer ids"):
            tuner.edit_many([good, bad], ["en", "fr"], mode=mode)
        with pytest.raises(ValueError, match=r"^Edit batch 1: Unknown language\(s\) \['xx'\]"):
            tuner.edit_many([good, good], ["en", "xx"], mode=mode)
        assert tuner.applied_edit_ids == []
    with pytest.raises(ValueError, match="one language entry per batch; got 2 batches and 1"):
        tuner.edit_many([good, good], ["en"])


def test_a_high_rank_batch_is_applied_as_one_matrix_with_the_same_outputs():
    """`LayerDelta.compact`: a layer holds the dense update when the factors cost more per row than the matrix."""
    editor = mend_editor()
    tuner = editor.model.base_model
    batch = editor._padded(editor.check_requests(REQUESTS, 128)[1])
    texts = [PICASSO, "La capitale de la France est [MASK] ."]
    probe = dict(editor.tokenizer(texts, return_tensors="pt", padding=True))
    edit = tuner.prepare_edit(batch, [r[2] if isinstance(r, tuple) else r["language"] for r in REQUESTS])
    with torch.no_grad(), tuner.apply_deltas(edit.deltas):  # the factors, as computed
        factored = editor.model(**probe).logits
    edit.apply()
    stored = [layer._applied[edit.id] for layer in tuner.lime_layers.values() if edit.id in layer._applied]
    assert stored and any(delta.A is None for delta in stored)  # at least one layer's batch is dense
    for key, delta in edit.deltas.items():
        layer_delta = tuner.lime_layers[key]._applied[edit.id]
        torch.testing.assert_close(layer_delta.dense(), delta.dense(), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(editor.model(**probe).logits, factored, rtol=1e-4, atol=1e-5)
    edit.revert()
