"""MEND as the LiME reference builds it, and LiME masks that re-weight but never resize an edit."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, build_model, make_batch
from peft import PeftModel, get_peft_model

import hf_lime  # noqa: F401  (registers the method)
from hf_lime import LimeConfig
from hf_lime.editors import LayerSpec, MendEditor
from hf_lime.trainer.episode import run_episode
from hf_lime.tuner.context import EditContext

LANGS = ["en", "fr", "de"]


def lime_model(family: str, seed: int = 0, **config):
    config.setdefault("languages", LANGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Conv1D fan_in_fan_out notice
        return get_peft_model(build_model(family, seed), LimeConfig(**config))


def layer_tokens(model, batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per edited layer, every token's input `x` and loss gradient `δ` at the output, found with plain hooks."""
    layers = model.base_model.lime_layers
    seen: dict[str, list] = {key: [] for key in layers}
    handles = []
    for key, layer in layers.items():

        def hook(module, args, output, key=key):
            output.retain_grad()
            seen[key].append((args[0].detach(), output))

        handles.append(layer.get_base_layer().register_forward_hook(hook))
    with torch.enable_grad():
        for layer in layers.values():
            layer.get_base_layer().weight.requires_grad_(True)
        model(**batch).loss.backward()
        for layer in layers.values():
            layer.get_base_layer().weight.requires_grad_(False)
    for handle in handles:
        handle.remove()
    return {
        key: (
            torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in calls]),
            torch.cat([out.grad.reshape(-1, out.shape[-1]) for _, out in calls]),
        )  # fmt: skip
        for key, calls in seen.items()
    }


def row_rms_scaled(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = values.clone()
    for row in rows.unique():
        out[rows == row] /= values[rows == row].pow(2).mean().sqrt()
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_untrained_mend_applies_the_normalised_factors_of_the_nonzero_tokens(family):
    """Identity blocks: ΔW = -lr · Σ_t LN(δ_t) LN(x_t)ᵀ over the tokens whose x and δ are both non-zero (each edit
    row's x and δ divided by their RMS over the row's tokens first)."""
    lr = 0.01
    model = lime_model(family, use_lime_mask=False, languages=[], edit_lr_init=lr, mend_rank=8)
    batch = make_batch(FAMILIES[family].task)
    tokens = layer_tokens(model, batch)
    edit = model.edit(batch)
    rows = torch.arange(batch["input_ids"].shape[0]).repeat_interleave(batch["input_ids"].shape[1])
    for key, (x, delta) in tokens.items():
        keep = (x != 0).any(-1) & (delta != 0).any(-1)
        x_hat = F.layer_norm(row_rms_scaled(x[keep], rows[keep]), x.shape[-1:], eps=1e-5)
        delta_hat = F.layer_norm(row_rms_scaled(delta[keep], rows[keep]), delta.shape[-1:], eps=1e-5)
        torch.testing.assert_close(edit.deltas[key].dense(), -lr * delta_hat.T @ x_hat, rtol=1e-4, atol=1e-6)
        assert edit.deltas[key].rank == int(keep.sum())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layers_sharing_a_network_go_through_it_in_one_batch_with_their_own_scale(family):
    """The batched network call gives, for every layer, what a call with that layer's tokens alone gives (trained
    editor: different per-layer scales and shifts, non-identity blocks)."""
    model = lime_model(family, mend_rank=8, mend_center=True)
    tuner = model.base_model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in tuner.editor.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    model.eval()
    batch = make_batch(FAMILIES[family].task)
    lang_ids = torch.tensor([0, 2])
    with torch.no_grad():
        batched = tuner.compute_edit(batch, lang_ids).deltas
        ctx = EditContext(tuner.model, tuner.lime_layers, batch, lang_ids, tuner.masks, tuner.edit_lrs)
        editor = tuner.editor
        assert any(len([k for k in editor._group if editor._group[k][0] == g]) > 1 for g in editor.nets)
        for spec in editor.layers:
            tokens = ctx.masked_inputs(spec.key, spec.d_in)
            group, index = editor._group[spec.key]
            x = editor.nets[group].centered(tokens.x, index)
            x, delta = row_rms_scaled(x, tokens.rows), row_rms_scaled(tokens.delta, tokens.rows)
            x_t, delta_t = editor.transform(spec.key, x, delta)
            expected = -ctx.edit_lr(spec.key) * delta_t.T @ x_t
            torch.testing.assert_close(batched[spec.key].dense(), expected, rtol=1e-4, atol=1e-6)


def test_the_raw_gradient_scale_is_discarded():
    """Scaling the edit loss by 1000 (a larger raw gradient) leaves the untrained edit unchanged."""
    model = lime_model("bert-mlm", use_lime_mask=False, languages=[], edit_lr_init=0.01)
    batch = make_batch("masked_lm")
    tuner = model.base_model
    plain = tuner.compute_edit(batch).deltas
    ctx = EditContext(model.base_model.model, tuner.lime_layers, batch, None, tuner.masks, tuner.edit_lrs)
    captured = ctx.capture()
    captured.grads.update({key: 1000.0 * grad for key, grad in captured.grads.items()})
    scaled = tuner.editor.compute_deltas(ctx).deltas
    for key in plain:
        torch.testing.assert_close(scaled[key].dense(), plain[key].dense(), rtol=1e-4, atol=1e-7)


def test_top_block_sees_only_the_target_positions():
    """After the last attention, only target positions get a gradient: MEND drops every other token there."""
    model = lime_model("bert-mlm", use_lime_mask=False, languages=[])
    batch = make_batch("masked_lm")  # one target position per row
    tuner = model.base_model
    ctx = EditContext(model.base_model.model, tuner.lime_layers, batch, None, tuner.masks, tuner.edit_lrs)
    for key in ("bert-encoder-layer-2-intermediate-dense", "bert-encoder-layer-2-output-dense"):
        tokens = ctx.masked_inputs(key, tuner.lime_layers[key].in_features)
        assert tokens.rows.tolist() == [0, 1]
    lower = ctx.masked_inputs("bert-encoder-layer-1-output-dense", 32)
    assert len(lower.rows) == batch["input_ids"].numel()  # attention spreads the gradient to every token below


def test_network_shape_is_the_references():
    layers = [LayerSpec(f"l{i}", f"l{i}", d_in=8, d_out=16) for i in range(3)] + [LayerSpec("o", "o", 16, 8)]
    editor = MendEditor(layers, rank=4, n_hidden=1)
    assert sorted(editor.nets) == ["16x8", "8x16"]  # one network per layer shape
    net = editor.nets["8x16"]
    assert len(net.stacks["xd"]) == 2  # n_hidden + 1 residual low-rank blocks
    block = net.stacks["xd"][0]
    assert block.down.shape == (4, 24) and block.up.shape == (24, 4)
    assert block.layer_scale.shape == (3, 24) and block.layer_shift.shape == (3, 24)  # per-layer scale / shift
    assert isinstance(net.norm_x, torch.nn.LayerNorm) and net.norm_x.elementwise_affine
    separate = MendEditor(layers, rank=4, combine=False, shared=False)
    assert sorted(separate.nets["l0"].stacks) == ["d", "x"]
    assert sorted(separate.nets) == ["l0", "l1", "l2", "o"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_masks_do_not_change_an_untrained_edits_size(family):
    """LiME on vs off with an untrained editor: |ΔW| of every layer equal within 1 % (here: equal)."""
    batch = make_batch(FAMILIES[family].task)
    off = lime_model(family, use_lime_mask=False, edit_lr_init=0.01).edit(batch, language="fr")
    on = lime_model(family, use_lime_mask=True, edit_lr_init=0.01).edit(batch, language="fr")
    for key, delta in off.deltas.items():
        ratio = on.deltas[key].dense().norm() / delta.dense().norm()
        assert abs(float(ratio) - 1.0) < 0.01, (key, float(ratio))


def test_a_trained_mask_reweights_tokens_without_resizing_them():
    model = lime_model("bert-mlm", use_lime_mask=True, mend_rank=8)
    tuner = model.base_model
    with torch.no_grad():
        for mask in tuner.masks.masks.values():
            mask.scale.uniform_(0.0, 5.0)
            mask.gate.log_alpha.uniform_(-3.0, 3.0)
    batch = make_batch("masked_lm")
    lang_ids = torch.tensor([1, 2])
    masked = EditContext(tuner.model, tuner.lime_layers, batch, lang_ids, tuner.masks, tuner.edit_lrs)
    plain = EditContext(tuner.model, tuner.lime_layers, batch, lang_ids, None, tuner.edit_lrs)
    tuner.eval()
    for key, layer in tuner.lime_layers.items():
        a, b = masked.masked_inputs(key, layer.in_features), plain.masked_inputs(key, layer.in_features)
        torch.testing.assert_close(a.x.norm(dim=-1), b.x.norm(dim=-1))
        torch.testing.assert_close(a.delta.norm(dim=-1), b.delta.norm(dim=-1))
        assert not torch.allclose(a.x, b.x)  # ... but the directions did change


def test_layer_norms_and_blocks_are_trained():
    """Training episodes change the LayerNorms' gain and bias and every parameter of the blocks."""
    model = lime_model("bert-mlm", mend_rank=8, edit_lr_init=0.01).train()
    editor = model.base_model.editor
    lang_ids = torch.tensor([0, 1])
    episode = {
        "edit": {**make_batch("masked_lm"), "lang_ids": lang_ids},
        "update": {**make_batch("masked_lm", seed=1), "lang_ids": lang_ids},
        "retain": {**make_batch("masked_lm", seed=2, target=9), "lang_ids": lang_ids},
    }
    before = {name: param.detach().clone() for name, param in editor.named_parameters()}
    optimizer = torch.optim.Adam(editor.parameters(), lr=1e-3)
    for _ in range(2):  # `up` starts at zero: `down` and the per-layer scales get a gradient from step two
        optimizer.zero_grad()
        run_episode(model, episode, "masked_lm", c_edit=1.0, c_loc=1.0, c_l0=1.0).loss.backward()
        optimizer.step()
    for name, param in editor.named_parameters():
        assert not torch.equal(param, before[name]), name
    assert any("norm_x.weight" in name for name in before) and any("norm_delta.bias" in name for name in before)


# ------------------------------------------------------------------------------------------------ mask_scope
def test_shared_scope_has_one_row_for_every_language():
    model = lime_model("bert-mlm", mask_scope="shared", mend_rank=8, edit_lr_init=0.01).eval()
    masks = model.base_model.masks
    assert all(mask.scale.shape[0] == 1 for mask in masks.masks.values())
    with torch.no_grad():
        for mask in masks.masks.values():
            mask.scale.uniform_(0.0, 5.0)
    batch = make_batch("masked_lm")
    en, fr = (model.base_model.compute_edit(batch, lang).deltas for lang in ("en", "fr"))
    for key in en:
        torch.testing.assert_close(en[key].dense(), fr[key].dense())
    assert masks.l0_penalty(torch.tensor([2])).item() == pytest.approx(masks.l0_penalty().item())


def test_language_scope_gives_each_language_its_row():
    model = lime_model("bert-mlm", mend_rank=8, edit_lr_init=0.01).eval()
    masks = model.base_model.masks
    assert all(mask.scale.shape[0] == len(LANGS) for mask in masks.masks.values())
    with torch.no_grad():
        for mask in masks.masks.values():
            mask.scale[1].uniform_(0.0, 5.0)
    batch = make_batch("masked_lm")
    en, fr = (model.base_model.compute_edit(batch, lang).deltas for lang in ("en", "fr"))
    assert any(not torch.allclose(en[key].dense(), fr[key].dense()) for key in en)


def test_mask_scope_is_validated_saved_and_reloaded(tmp_path):
    with pytest.raises(ValueError, match="mask_scope"):
        LimeConfig(languages=LANGS, mask_scope="global")
    model = lime_model("bert-mlm", mask_scope="shared", mend_rank=8)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build_model("bert-mlm"), tmp_path)
    assert reloaded.peft_config["default"].mask_scope == "shared"
    assert all(mask.scale.shape[0] == 1 for mask in reloaded.base_model.masks.masks.values())


# ------------------------------------------------------------------------------------------------ mend_center
def test_centering_uses_the_running_mean_of_training_inputs(tmp_path):
    model = lime_model("bert-mlm", mend_center=True, mend_rank=8, edit_lr_init=0.01, use_lime_mask=False, languages=[])
    tuner = model.base_model
    batch = make_batch("masked_lm")
    plain = lime_model("bert-mlm", mend_rank=8, edit_lr_init=0.01, use_lime_mask=False, languages=[]).eval()
    tuner.eval()
    fresh = tuner.compute_edit(batch).deltas  # no statistics yet: nothing is subtracted
    for key, delta in plain.base_model.compute_edit(batch).deltas.items():
        torch.testing.assert_close(fresh[key].dense(), delta.dense())
    tuner.train()
    seen = {key: [] for key in tuner.lime_layers}
    for seed in range(3):
        b = make_batch("masked_lm", seed=seed)
        ctx = EditContext(tuner.model, tuner.lime_layers, b, None, None, tuner.edit_lrs)
        for key, layer in tuner.lime_layers.items():
            seen[key].append(ctx.masked_inputs(key, layer.in_features).x)
        tuner.compute_edit(b)
    editor = tuner.editor
    for key, xs in seen.items():
        group, index = editor._group[key]
        torch.testing.assert_close(editor.nets[group].x_mean[index], torch.cat(xs).mean(0))
    tuner.eval()
    means = {name: buf.clone() for name, buf in editor.named_buffers()}
    tuner.compute_edit(batch)  # evaluation mode: the statistics stay frozen
    assert all(torch.equal(buf, means[name]) for name, buf in editor.named_buffers())
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build_model("bert-mlm"), tmp_path).base_model.editor
    for name, buf in reloaded.named_buffers():
        torch.testing.assert_close(buf, means[name])


# ----------------------------------------------------------------------------------------- mend_compute_dtype
DTYPES = ("float32", "bfloat16")


def _random_blocks(model) -> None:
    """Give every block a non-zero `up`, so the networks' products matter (an untrained `up` is zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for net in model.base_model.editor.nets.values():
            for block in net.stacks["xd"]:
                block.up.normal_(0.0, 0.05)


def test_bfloat16_products_keep_an_untrained_edit_exactly_and_a_trained_one_closely():
    batch = make_batch("masked_lm")
    exact, lowered = (lime_model("bert-mlm", mend_rank=16, mend_compute_dtype=dt).eval() for dt in DTYPES)
    lowered.base_model.load_state_dict(exact.base_model.state_dict())  # the same editor, masks and base weights
    fresh = (exact.base_model.compute_edit(batch, "en").deltas, lowered.base_model.compute_edit(batch, "en").deltas)
    for key in fresh[0]:  # `up` = 0: the blocks add exactly their bias, whatever the products' precision
        torch.testing.assert_close(fresh[1][key].dense(), fresh[0][key].dense(), rtol=0, atol=0)
    for model in (exact, lowered):
        _random_blocks(model)
    trained = (exact.base_model.compute_edit(batch, "en").deltas, lowered.base_model.compute_edit(batch, "en").deltas)
    for key in trained[0]:
        full, low = trained[0][key].dense(), trained[1][key].dense()
        assert low.dtype == torch.float32 and not torch.equal(low, full)  # the products were lowered...
        assert (low - full).norm() <= 0.02 * full.norm()  # ...and the edit is the same to within bfloat16's precision


def test_bfloat16_networks_train_float32_weights_and_are_saved(tmp_path):
    model = lime_model("bert-mlm", mend_rank=16, mend_compute_dtype="bfloat16").train()
    _random_blocks(model)
    lang_ids = torch.tensor([0, 1])
    episode = {part: {**make_batch("masked_lm", seed=seed), "lang_ids": lang_ids}
               for seed, part in enumerate(("edit", "update", "retain"))}  # fmt: skip
    run_episode(model, episode, "masked_lm", c_edit=1.0, c_loc=1.0, c_l0=1.0).loss.backward()
    params = dict(model.base_model.editor.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    products = [name for name in params if name.endswith((".up", ".down"))]
    assert products
    for name in products:
        grad = params[name].grad
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build_model("bert-mlm"), tmp_path)
    assert reloaded.peft_config["default"].mend_compute_dtype == "bfloat16"
    nets = reloaded.base_model.editor.nets.values()
    blocks = [block for net in nets for stack in net.stacks.values() for block in stack]
    assert blocks and all(block.compute_dtype == "bfloat16" for block in blocks)


def test_bfloat16_weight_copies_follow_every_change_of_the_weights():
    from hf_lime.editors.lowered import LoweredWeights

    down, up, cache = torch.nn.Parameter(torch.randn(4, 6)), torch.nn.Parameter(torch.randn(6, 4)), LoweredWeights()
    first = cache.get(down, up)
    assert cache.get(down, up)[0] is first[0]  # unchanged weights: the same copies
    with torch.no_grad():
        up.add_(1.0)  # as an optimizer step does
    second = cache.get(down, up)
    torch.testing.assert_close(second[1].float(), up.detach(), atol=0.05, rtol=0.01)
    assert not torch.equal(second[1], first[1])
    up.data = torch.zeros(6, 4)  # new storage
    assert cache.get(down, up)[1].abs().sum() == 0
