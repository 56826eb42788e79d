"""KnowledgeEditor ("ke") and the fine-tuning baseline ("ft") behind the LIME editor interface."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FAMILIES, build_model, make_batch
from peft import get_peft_model

import hf_lime  # noqa: F401  (registers the method)
from hf_lime import LimeConfig
from hf_lime.editors import FineTuneEditor, KnowledgeEditor, LayerSpec

LANGS = ["en", "fr"]
FAMILY_SUBSET = ["bert-mlm", "bert-cls", "gpt2"]
SETTINGS = {
    "ke": {"editor": "ke", "languages": LANGS, "edit_lr_init": 1.0, "ke_hidden_dim": 8},
    "ft": {"editor": "ft", "use_lime_mask": False, "ft_optimizer": "adam", "ft_lr": 1e-2, "ft_steps": 5},
}


def lime_model(family: str, seed: int = 0, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Conv1D fan_in_fan_out notice
        return get_peft_model(build_model(family, seed), LimeConfig(**config))


def language_of(model) -> str | None:
    return "en" if model.base_model.languages else None


def base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items()}


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def weight_grads(model, batch) -> dict[str, torch.Tensor]:
    """`∇W` of the edit loss for every edited layer, in `nn.Linear` orientation."""
    layers = model.base_model.lime_layers
    weights = [layer.get_base_layer().weight for layer in layers.values()]
    for w in weights:
        w.requires_grad_(True)
    grads = torch.autograd.grad(model(**batch).loss, weights)
    for w in weights:
        w.requires_grad_(False)
    return {k: (g.T if layer.fan_in_fan_out else g) for (k, layer), g in zip(layers.items(), grads, strict=True)}


def train_editor(model, episodes, steps: int, lr: float = 1e-2) -> None:
    """A few optimiser steps on the post-edit NLL of an update batch (LimeTrainer's edit term), per episode."""
    tuner = model.base_model
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        for edit_batch, update_batch, language in episodes:
            out = tuner.compute_edit(edit_batch, language)
            with tuner.apply_deltas(out.deltas):
                loss = model(**update_batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


# ------------------------------------------------------------------------------------------------ both editors
def test_registry_and_flags():
    assert KnowledgeEditor.requires_training and KnowledgeEditor.uses_masks
    assert not FineTuneEditor.requires_training and not FineTuneEditor.uses_masks
    assert isinstance(lime_model("bert-mlm", **SETTINGS["ke"]).base_model.editor, KnowledgeEditor)


# ------------------------------------------------------------------------------------------------ KnowledgeEditor
@pytest.mark.parametrize("family", FAMILY_SUBSET)
def test_untrained_ke_is_one_gradient_step(family):
    lr = 0.5
    model = lime_model(family, editor="ke", use_lime_mask=False, edit_lr_init=lr)
    batch = make_batch(FAMILIES[family].task)
    grads = weight_grads(model, batch)
    edit = model.edit(batch)
    for key, grad in grads.items():
        torch.testing.assert_close(edit.deltas[key].dense(), -lr * grad, rtol=1e-4, atol=1e-6)
    # one rank per token with a non-zero input and gradient (all-zero tokens are dropped) + 1 shift per row
    assert all(2 < d.rank <= batch["input_ids"].numel() + 2 for d in edit.deltas.values())


def test_ke_conditions_each_row_separately():
    """With per-row conditioning, a 2-row edit is the mean of the two 1-row edits (rows are independent here)."""
    model = lime_model("bert-mlm", editor="ke", use_lime_mask=False, edit_lr_init=1.0, ke_hidden_dim=8)
    with torch.no_grad():
        for p in model.base_model.lime_editor.parameters():
            p.add_(0.5 * torch.randn_like(p))
    batch = make_batch("masked_lm", seed=3)
    batch["labels"][1, 3] = 11  # the rows ask for different targets
    tuner = model.base_model
    with torch.no_grad():
        both = tuner.compute_edit(batch).deltas
        rows = [tuner.compute_edit({k: v[i : i + 1] for k, v in batch.items()}).deltas for i in range(2)]
        h = tuner.editor.condition_vectors(_ctx_for(tuner, batch))
    assert not torch.allclose(h[0], h[1])
    for key, delta in both.items():
        expected = (rows[0][key].dense() + rows[1][key].dense()) / 2
        torch.testing.assert_close(delta.dense(), expected, rtol=1e-4, atol=1e-6)


def _ctx_for(tuner, batch):
    from hf_lime.tuner.context import EditContext

    return EditContext(tuner.model, tuner.lime_layers, batch, None, tuner.masks, tuner.edit_lrs)


def test_ke_rejects_class_labels_on_a_token_model():
    model = lime_model("bert-mlm", **SETTINGS["ke"])
    batch = make_batch("masked_lm")
    batch["labels"] = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="token-level model"):
        model.edit(batch, language="en")
    assert model.base_model.applied_edit_ids == []


@pytest.mark.parametrize("family", FAMILY_SUBSET)
def test_reference_ke_applies_its_update_formula(family):
    """`ke_conditioner="lstm"`: ΔW = lr · σ(η) · (∇W ⊙ softmax(a_row) a_colᵀ + softmax(b_row) b_colᵀ), with the
    heads' outputs read from the condition vector of the bi-LSTM, and ∇W the layer's real weight gradient."""
    lr = 0.3
    model = lime_model(family, editor="ke", ke_conditioner="lstm", use_lime_mask=False, edit_lr_init=lr,
                       ke_hidden_dim=8)  # fmt: skip
    tuner = model.base_model
    batch = make_batch(FAMILIES[family].task, batch_size=1)
    grads = weight_grads(model, batch)
    edit = model.edit(batch)
    with torch.no_grad():
        c = tuner.editor.condition_vectors(_ctx_for(tuner, batch))
        for key, grad in grads.items():
            head = tuner.editor.heads[key]
            a_col, a_row, b_col, b_row, eta = head.net(c)[0].split(head.sizes)
            expected = lr * torch.sigmoid(eta) * (grad * torch.outer(a_row.softmax(-1), a_col)
                                                  + torch.outer(b_row.softmax(-1), b_col))  # fmt: skip
            torch.testing.assert_close(edit.deltas[key].dense(), expected, rtol=1e-4, atol=1e-6)


def test_reference_ke_conditioner_reads_each_row_alone_whatever_the_padding():
    """The bi-LSTM's final states of a row do not depend on the other rows or on padding after it."""
    model = lime_model("bert-mlm", editor="ke", ke_conditioner="lstm", use_lime_mask=False, ke_hidden_dim=8)
    tuner = model.base_model
    batch = make_batch("masked_lm", batch_size=2, seq_len=8, seed=4)
    batch["attention_mask"][1, 5:] = 0  # the second row is shorter
    with torch.no_grad():
        both = tuner.editor.condition_vectors(_ctx_for(tuner, batch))
        alone = tuner.editor.condition_vectors(_ctx_for(tuner, {k: v[1:, :5] for k, v in batch.items()}))
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both[0], both[1])


def test_reference_ke_trains_every_parameter_and_saves_and_loads(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    model = lime_model("bert-mlm", editor="ke", ke_conditioner="lstm", languages=LANGS, ke_hidden_dim=8,
                       edit_lr_init=1.0)  # fmt: skip
    names = [n for n, p in model.named_parameters() if ".lime_editor." in n]
    assert any(".lstm." in n for n in names) and any("parametrizations" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    train_editor(model, [(make_batch("masked_lm", seed=1), make_batch("masked_lm", seed=2), "en")], steps=3)
    after = dict(model.named_parameters())
    assert [n for n in names if torch.equal(before[n], after[n])] == []
    batch = make_batch("masked_lm", seed=5)
    with torch.no_grad():
        expected = {k: d.dense() for k, d in model.base_model.compute_edit(batch, "fr").deltas.items()}
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(build_model("bert-mlm", 0), tmp_path).eval()
    assert loaded.base_model.lime_config.ke_conditioner == "lstm"
    with torch.no_grad():
        got = loaded.base_model.compute_edit(batch, "fr").deltas
    for key, dense in expected.items():
        torch.testing.assert_close(got[key].dense(), dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["bert-mlm", "bert-cls"])
def test_ke_training_changes_every_trainable_parameter_and_no_base_weight(family):
    torch.manual_seed(0)
    model = lime_model(family, **SETTINGS["ke"])
    task = FAMILIES[family].task
    editor_params = {n: p.detach().clone() for n, p in model.named_parameters() if ".lime_editor." in n}
    assert editor_params and all(p.requires_grad for n, p in model.named_parameters() if ".lime_editor." in n), (
        "KE parameters must be trainable"
    )
    state = base_state(model)
    episodes = [(make_batch(task, seed=1), make_batch(task, seed=2), "en")]
    train_editor(model, episodes, steps=3)
    after = dict(model.named_parameters())
    unchanged = [n for n, p in editor_params.items() if torch.equal(p, after[n])]
    assert unchanged == []
    base_after = model.get_base_model().state_dict()
    assert all(torch.equal(state[k], base_after[k]) for k in state)


@pytest.mark.parametrize("editor", ["ke", "mend"])
def test_trained_masks_make_the_update_language_specific(editor):
    torch.manual_seed(0)
    model = lime_model("bert-mlm", editor=editor, languages=LANGS, edit_lr_init=1.0, ke_hidden_dim=8, mend_rank=8)
    tuner, batch = model.base_model, make_batch("masked_lm", seed=7)

    def deltas(language):
        with torch.no_grad():
            return {k: d.dense() for k, d in tuner.compute_edit(batch, language).deltas.items()}

    model.eval()
    en, fr = deltas("en"), deltas("fr")
    assert all(torch.equal(en[k], fr[k]) for k in en)  # every language starts with the same mask
    episodes = [
        (make_batch("masked_lm", seed=1, target=7), make_batch("masked_lm", seed=2, target=7), "en"),
        (make_batch("masked_lm", seed=3, target=20), make_batch("masked_lm", seed=4, target=20), "fr"),
    ]
    train_editor(model, episodes, steps=3, lr=5e-2)
    en, fr = deltas("en"), deltas("fr")
    assert any(not torch.allclose(en[k], fr[k]) for k in en)


# ------------------------------------------------------------------------------------------------ fine-tuning
def _manual_finetune(family: str, batch: dict, optimizer: str, lr: float, steps: int) -> dict[str, torch.Tensor]:
    """Reference: fine-tune the edited layers' weights of a copy of the base model directly; return `W_k - W_0`."""
    model = lime_model(family, editor="ft", use_lime_mask=False)
    layers = model.base_model.lime_layers
    weights = {k: layer.get_base_layer().weight for k, layer in layers.items()}
    start = {k: w.detach().clone() for k, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[optimizer]
    opt = opt_cls(list(weights.values()), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    diffs = {k: (w.detach() - start[k]) for k, w in weights.items()}
    return {k: (d.T if layers[k].fan_in_fan_out else d) for k, d in diffs.items()}


@pytest.mark.parametrize("family", ["bert-mlm", "gpt2"])
@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 1.0), ("adam", 1e-2), ("rmsprop", 1e-3)])
def test_ft_equals_fine_tuning_the_weights(family, optimizer, lr):
    steps = 3
    batch = make_batch(FAMILIES[family].task)
    config = {"ft_optimizer": optimizer, "ft_lr": lr, "ft_steps": steps, "ft_early_stop": False}
    model = lime_model(family, editor="ft", use_lime_mask=False, **config)
    edit = model.edit(batch)
    assert edit.info.steps == steps
    expected = _manual_finetune(family, batch, optimizer, lr, steps)
    for key, delta in edit.deltas.items():
        torch.testing.assert_close(delta.dense(), expected[key], rtol=1e-4, atol=1e-5)
    if optimizer != "sgd":
        assert all(d.A is None for d in edit.deltas.values())
    else:  # exactly low-rank: the top FFN output layer gets a gradient only at the positions scored by the loss
        top = model.base_model.layer_specs[-1].key
        scored = int((batch["labels"] != -100).sum())
        assert edit.deltas[top].A is not None and edit.deltas[top].rank == scored * steps


@pytest.mark.parametrize("family", FAMILY_SUBSET)
def test_ft_early_stops_once_the_target_is_the_argmax(family):
    task = FAMILIES[family].task
    model = lime_model(family, editor="ft", use_lime_mask=False, ft_optimizer="adam", ft_lr=5e-2, ft_steps=30)
    batch = make_batch(task)
    edit = model.edit(batch)
    assert 0 < edit.info.steps < 30
    logits = outputs(model, batch)
    labels = batch["labels"]
    if task == "seq_cls":
        assert torch.equal(logits.argmax(-1), labels)
    elif task == "masked_lm":
        assert torch.equal(logits[:, 3].argmax(-1), labels[:, 3])
    else:  # causal: position t predicts token t + 1
        assert torch.equal(logits[:, -3:-1].argmax(-1), labels[:, -2:])
    again = model.edit(batch)  # already holds: no step, no update
    assert again.info.steps == 0 and again.deltas == {}


@pytest.mark.parametrize("family", FAMILY_SUBSET)
def test_ft_on_a_model_class_of_unknown_task_uses_the_models_own_loss_and_stops_alike(family):
    config = {"editor": "ft", "use_lime_mask": False, "ft_optimizer": "adam", "ft_lr": 5e-2, "ft_steps": 30}
    batch = make_batch(FAMILIES[family].task)
    known = lime_model(family, **config)
    base = build_model(family)
    base.__class__ = type("CustomEditTarget", (type(base),), {})  # a class name no task can be read from
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unknown = get_peft_model(base, LimeConfig(**config))
    reference, fallback = known.edit(batch), unknown.edit(batch)
    assert 0 < fallback.info.steps < 30 and fallback.info.steps == reference.info.steps
    assert torch.allclose(outputs(unknown, batch), outputs(known, batch), atol=1e-5)


def test_locality_constrained_ft_keeps_retain_outputs_closer():
    config = {"ft_optimizer": "adam", "ft_lr": 2e-2, "ft_steps": 8, "ft_early_stop": False}
    batch = make_batch("masked_lm")
    retain = {k: v for k, v in make_batch("masked_lm", batch_size=4, seed=5).items() if k != "labels"}
    retain["attention_mask"][:, -2:] = 0  # padding is left out of the KL

    def retain_kl(loc_coef: float) -> float:
        model = lime_model("bert-mlm", editor="ft", use_lime_mask=False, ft_loc_coef=loc_coef, **config)
        base = outputs(model, retain).log_softmax(-1)
        before = model(**batch).loss
        model.edit(batch, retain_inputs=retain)
        assert model(**batch).loss < before
        kl = (base.exp() * (base - outputs(model, retain).log_softmax(-1))).sum(-1)
        return kl[retain["attention_mask"].bool()].mean().item()

    plain, constrained = retain_kl(0.0), retain_kl(10.0)
    assert constrained < plain


def test_ft_with_default_mask_setting_creates_no_masks():
    with pytest.warns(UserWarning, match="use_lime_mask"):
        config = LimeConfig(editor="ft")
    model = get_peft_model(build_model("bert-mlm"), config)
    assert not model.base_model.masks.enabled
    assert not any(".lime_masks." in n for n in model.state_dict())
    batch = make_batch("masked_lm")
    before = model(**batch).loss
    model.edit(batch)
    assert model(**batch).loss < before


def test_ft_retain_input_errors_and_warning():
    model = lime_model("bert-mlm", editor="ft", use_lime_mask=False, ft_loc_coef=1.0, ft_steps=2)
    batch, state = make_batch("masked_lm"), base_state(model)
    with pytest.raises(TypeError, match="retain_inputs"):
        model.edit(batch, retain_inputs=[1, 2])
    with pytest.raises(ValueError, match="input_ids"):
        model.edit(batch, retain_inputs={"input_ids": torch.zeros(3)})
    assert model.base_model.applied_edit_ids == []
    assert all(torch.equal(state[k], v) for k, v in model.get_base_model().state_dict().items())
    with pytest.warns(UserWarning, match="retain_inputs"):
        model.edit(batch)


def test_ft_rejects_bad_constructor_values():
    layers = [LayerSpec("l0", "l0", d_in=4, d_out=4)]
    with pytest.raises(ValueError, match="optimizer"):
        FineTuneEditor(layers, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps"):
        FineTuneEditor(layers, steps=0)
