"""The LIME PEFT method on every supported family: edits, revert, merge, stacking, save/load, files written."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, build_model, make_batch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import hf_lime  # noqa: F401  (registers the method)
from hf_lime import LimeConfig, LimeLayer

LANGS = ["en", "fr", "de"]


def lime_model(family: str, seed: int = 0, **config):
    config.setdefault("languages", LANGS)
    return get_peft_model(build_model(family, seed), LimeConfig(**config))


def base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items()}


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_injects_top_ffn_layers(family):
    model = lime_model(family)
    layers = model.base_model.lime_layers
    assert len(layers) == 6  # two FFN linears in each of the top 3 of 3 blocks
    assert all(isinstance(m, LimeLayer) for m in layers.values())
    assert not any("attention" in name or "attn" in name for name in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lime_" in n for n in trainable)


def test_num_top_layers_selects_the_top_blocks():
    model = lime_model("bert-mlm", num_top_layers=1)
    assert sorted(model.base_model.lime_layers) == [
        "bert-encoder-layer-2-intermediate-dense",
        "bert-encoder-layer-2-output-dense",
    ]
    assert model.peft_config["default"].layers_to_transform == [2]


def test_gpt2_conv1d_switches_fan_in_fan_out():
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        model = lime_model("gpt2")
    assert model.peft_config["default"].fan_in_fan_out
    assert all(layer.fan_in_fan_out for layer in model.base_model.lime_layers.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_edit_lowers_loss_and_moves_prediction(family):
    model = lime_model(family, edit_lr_init=1e-3)
    task = FAMILIES[family].task
    batch = make_batch(task)
    before = model(**batch)
    edit = model.edit(batch, language="fr")
    after = model(**batch)
    assert after.loss < before.loss
    assert edit.info.loss_before == pytest.approx(before.loss.item(), rel=1e-5)
    if task == "masked_lm":
        p_before = before.logits[:, 3].softmax(-1)[:, 7]
        p_after = after.logits[:, 3].softmax(-1)[:, 7]
        assert (p_after > p_before).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merge_equals_apply(family):
    model = lime_model(family, edit_lr_init=1.0)
    batch = make_batch(FAMILIES[family].task)
    edit = model.edit(batch, language="de")
    applied = outputs(model, batch)
    edit.merge()
    assert edit.state == "merged" and model.base_model.applied_edit_ids == []
    torch.testing.assert_close(outputs(model, batch), applied, rtol=1e-5, atol=1e-5)


def test_edits_stack_in_order_and_context_manager_reverts():
    model = lime_model("bert-mlm", edit_lr_init=1.0)
    b1, b2 = make_batch("masked_lm", seed=1), make_batch("masked_lm", seed=2, target=9)
    clean = outputs(model, b1)
    first = model.edit(b1, language="en")
    after_first = outputs(model, b1)
    with model.edit(b2, language="fr") as second:
        assert model.base_model.applied_edit_ids == [first.id, second.id]
        assert not torch.equal(outputs(model, b1), after_first)
    assert second.state == "reverted"
    assert torch.equal(outputs(model, b1), after_first)
    first.revert()
    assert torch.equal(outputs(model, b1), clean)


def test_second_edit_sees_the_first():
    """A stacked edit is computed on the already-edited model (its gradient differs)."""
    model = lime_model("bert-mlm", edit_lr_init=1.0)
    batch = make_batch("masked_lm")
    first = model.edit(batch, language="en")
    second = model.edit(batch, language="en")
    key = next(iter(first.deltas))
    assert not torch.allclose(first.deltas[key].dense(), second.deltas[key].dense())


def test_batched_edit_one_language_per_row_uses_each_rows_mask():
    model = lime_model("bert-mlm", edit_lr_init=1.0).eval()  # deterministic gates
    with torch.no_grad():
        # a uniform scale would cancel (masks re-weight, they never resize): change some features only
        model.base_model.masks.masks["bert-encoder-layer-2-output-dense"].scale[1, :8].mul_(5.0)
    batch = make_batch("masked_lm")
    same = model.base_model.compute_edit(batch, ["en", "en"]).deltas
    mixed = model.base_model.compute_edit(batch, ["en", "fr"]).deltas
    key = "bert-encoder-layer-2-output-dense"
    assert not torch.allclose(same[key].dense(), mixed[key].dense())
    other = "bert-encoder-layer-2-intermediate-dense"
    torch.testing.assert_close(same[other].dense(), mixed[other].dense())


def test_applying_an_edit_copies_no_weights():
    model = lime_model("bert-mlm", edit_lr_init=1.0)
    ptrs = {k: v.data_ptr() for k, v in model.get_base_model().state_dict().items()}
    model.edit(make_batch("masked_lm"), language="en")
    assert {k: v.data_ptr() for k, v in model.get_base_model().state_dict().items()} == ptrs


def test_functional_path_is_differentiable_and_leaves_base_untouched():
    model = lime_model("bert-mlm")
    model.train()
    tuner = model.base_model
    batch, update = make_batch("masked_lm", seed=1), make_batch("masked_lm", seed=2)
    state = base_state(model)
    out = tuner.compute_edit(batch, ["en", "fr"])
    with tuner.apply_deltas(out.deltas):
        loss = model(**update).loss + tuner.l0_penalty()
    loss.backward()
    for name in ("lime_editor", "lime_masks", "lime_edit_lrs"):
        grads = [p.grad for n, p in model.named_parameters() if f".{name}." in n]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    after = model.get_base_model().state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert tuner.applied_edit_ids == []
    assert not tuner.model.training  # the frozen base model never enters train mode


def test_files_written_and_non_default_adapter_name(tmp_path):
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS), adapter_name="xl")
    model.save_pretrained(tmp_path)
    folder = tmp_path / "xl"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LIME" and config["languages"] == LANGS
    keys = load_file(folder / "adapter_model.safetensors").keys()
    assert keys and all(".lime_" in k for k in keys)
    assert not any(".xl." in k for k in keys)  # the adapter name is not baked into the keys
    assert not any("word_embeddings" in k or "base_layer" in k for k in keys)  # never base weights
    loaded = PeftModel.from_pretrained(build_model("bert-mlm"), folder, adapter_name="other")
    ours = {k.replace(".xl.", "."): v for k, v in model.state_dict().items()}
    theirs = {k.replace(".other.", "."): v for k, v in loaded.state_dict().items()}
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_language_order_is_saved_and_reloaded(tmp_path):
    model = lime_model("bert-mlm", languages=["zh", "en", "ar"])
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(build_model("bert-mlm"), tmp_path)
    assert loaded.base_model.languages == ["zh", "en", "ar"]


def test_learned_edit_step_sizes_stay_positive():
    from hf_lime.editors.base import EditStepSizes

    sizes = EditStepSizes(["a", "b"], init=1e-3)
    assert torch.allclose(sizes.lrs, torch.full((2,), 1e-3))
    optimizer = torch.optim.Adam(sizes.parameters(), lr=0.5)
    for _ in range(50):  # a gradient that pushes the step sizes down as hard as it can
        optimizer.zero_grad()
        (sizes("a") + sizes("b")).backward()
        optimizer.step()
    assert bool((sizes.lrs > 0).all()) and float(sizes.lrs.max()) < 1e-3
    assert sizes.fill_(0.0)("a").item() == 0.0 and sizes.fill_(2.0)("b").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="> 0"):
        EditStepSizes(["a"], init=-1e-3)


def test_peft_save_writes_a_card_that_names_hf_lime(tmp_path):
    model = lime_model("bert-mlm")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "hf_lime" in card and "import hf_lime" in card and "KeyError: 'LIME'" in card
    assert "library_name: peft" in card  # PEFT's own metadata is kept
    model.save_pretrained(tmp_path)  # saving again does not repeat the notice
    assert (tmp_path / "README.md").read_text().count("## A LIME adapter (hf_lime)") == 1
    from peft import LoraConfig

    lora = get_peft_model(build_model("bert-mlm"), LoraConfig(target_modules=["query"]))
    lora.save_pretrained(tmp_path / "lora")
    assert "hf_lime" not in (tmp_path / "lora" / "README.md").read_text()  # other adapters are left alone


def test_edit_state_follows_peft_merge_unmerge_and_revert_all():
    model = lime_model("bert-mlm", edit_lr_init=1e-2)
    batch = make_batch("masked_lm")
    base, clean = base_state(model), outputs(model, batch)
    edit = model.base_model.edit(batch, language="en")
    edited = outputs(model, batch)
    model.merge_adapter()  # PEFT folds the applied edit into the weights
    assert edit.state == "merged" and not edit.is_applied
    torch.testing.assert_close(outputs(model, batch), edited, rtol=1e-4, atol=1e-5)
    model.unmerge_adapter()  # ... and takes it out again
    assert edit.state == "applied"
    torch.testing.assert_close(outputs(model, batch), edited, rtol=1e-4, atol=1e-5)
    model.merge_adapter()
    with pytest.warns(UserWarning, match="floating-point rounding"):
        edit.revert()  # works on a PEFT-merged edit: subtracts it
    assert edit.state == "reverted"
    torch.testing.assert_close(outputs(model, batch), clean, rtol=1e-4, atol=1e-5)
    for name, tensor in base_state(model).items():
        torch.testing.assert_close(tensor, base[name], rtol=1e-5, atol=1e-6)
    now = outputs(model, batch)
    second = model.base_model.edit(batch, language="en")
    model.base_model.revert_all()
    assert second.state == "reverted" and not second.is_applied
    assert torch.equal(outputs(model, batch), now)


def test_deleted_adapter_and_weighted_adapters_give_clear_errors():
    model = lime_model("bert-mlm")
    with pytest.raises(ValueError, match="cannot be combined with `add_weighted_adapter`"):
        model.add_weighted_adapter(["default"], [1.0], "mix")
    model.delete_adapter("default")
    with pytest.raises(ValueError, match="no active LIME adapter"):
        model.base_model.edit(make_batch("masked_lm"), language="en")


def test_compute_edit_takes_resolved_language_ids():
    model = lime_model("bert-mlm", edit_lr_init=1.0).eval()  # deterministic gates
    batch = make_batch("masked_lm")
    by_code = model.base_model.compute_edit(batch, ["fr", "de"])
    by_id = model.base_model.compute_edit(batch, torch.tensor([1, 2]))
    assert by_id.info.languages == ["fr", "de"]
    for a, b in zip(by_code.deltas.values(), by_id.deltas.values(), strict=True):
        assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    for bad, match in [(torch.tensor([0, 3]), r"lie in \[0, 3\)"), (torch.tensor([0]), "one id per row"),
                       (torch.tensor([0.0, 1.0]), "integer")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            model.base_model.compute_edit(batch, bad)


def test_a_layer_applies_its_stacked_edits_as_one_update_made_once_per_change():
    """Several applied edits run as one joined update (their factors side by side, or the dense sum once that is
    cheaper), equal to the sum of their products; it is made once and remade whenever the applied edits change
    (apply, revert, PEFT's merge and unmerge); one edit runs as it is."""
    from hf_lime.deltas import LayerDelta

    torch.manual_seed(0)
    layer = LimeLayer(torch.nn.Linear(32, 24), "default")
    x = torch.randn(5, 32)
    base = layer.base_layer(x)
    deltas = [LayerDelta(torch.randn(24, 2), torch.randn(2, 32)) for _ in range(12)]  # 12 · 2 > 24 · 32 / 56: dense
    for edit_id, delta in enumerate(deltas[:2]):
        layer.add_delta(edit_id, delta)
    joined = layer._applied_update()
    assert joined is layer._applied_update() and joined.A is not None and joined.rank == 4  # factors side by side
    torch.testing.assert_close(layer(x), base + sum(x @ d.dense().T for d in deltas[:2]))
    for edit_id, delta in enumerate(deltas[2:], start=2):
        layer.add_delta(edit_id, delta)
    assert layer._applied_update().A is None  # the dense sum is cheaper to apply
    torch.testing.assert_close(layer(x), base + sum(x @ d.dense().T for d in deltas), rtol=1e-5, atol=1e-5)
    layer.remove_delta(5)
    expected = base + sum(x @ d.dense().T for i, d in enumerate(deltas) if i != 5)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.merge()
    assert layer._applied_update() is None
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    for edit_id in range(12):
        layer.remove_delta(edit_id)
    layer.add_delta(0, deltas[0])
    assert layer._applied_update() is layer._applied[0]  # one edit: as it is
    torch.testing.assert_close(layer(x), base + x @ deltas[0].dense().T)
    layer.remove_delta(0)
    torch.testing.assert_close(layer(x), base)
