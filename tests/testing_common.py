"""Shared checks of the LIME adapter, run by the test matrix (tests/test_matrix.py) for every case of family × editor
× mask — as peft's `testing_common.py` serves its tuners. Each check takes a built model and asserts one property."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, build_model, make_batch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import hf_lime  # noqa: F401  (registers the method)
from hf_lime import LimeConfig

LANGS = ["en", "fr", "de"]
EDITOR_SETTINGS = {
    "mend": {"editor": "mend", "mend_rank": 8, "edit_lr_init": 1e-3},
    "ke": {"editor": "ke", "ke_hidden_dim": 8, "edit_lr_init": 1.0},
    "ft": {"editor": "ft", "ft_optimizer": "adam", "ft_lr": 1e-2, "ft_steps": 5},
}
MASK_SETTINGS = {
    "off": {"use_lime_mask": False},
    "language": {"use_lime_mask": True, "mask_scope": "language"},
    "shared": {"use_lime_mask": True, "mask_scope": "shared"},
}


@dataclass(frozen=True)
class Case:
    family: str
    editor: str
    mask: str

    @property
    def id(self) -> str:
        return f"{self.family}-{self.editor}-mask_{self.mask}"

    @property
    def task(self) -> str:
        return FAMILIES[self.family].task

    def config(self) -> LimeConfig:
        return LimeConfig(languages=LANGS, **EDITOR_SETTINGS[self.editor], **MASK_SETTINGS[self.mask])

    def model(self, seed: int = 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GPT-2's Conv1D fan_in_fan_out notice
            return get_peft_model(build_model(self.family, seed), self.config())

    def batch(self) -> dict[str, torch.Tensor]:
        return make_batch(self.task)


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items()}


def perturb_trainables(model, scale: float = 0.1, seed: int = 0) -> None:
    """Move every trainable parameter off its initial value (a stand-in for training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


# ------------------------------------------------------------------------------------------------ the checks
def check_edit_lowers_the_loss(model, batch, language: str = "fr") -> None:
    """An edit lowers the edit batch's loss, and `Edit.info` records the loss it started from."""
    before = model(**batch).loss
    edit = model.edit(batch, language=language)
    assert model(**batch).loss < before
    assert edit.info.loss_before == pytest.approx(before.item(), rel=1e-5)
    edit.revert()


def check_revert_is_bit_exact(model, batch, language: str = "en") -> None:
    """Reverting restores the outputs and every base weight bit for bit, and leaves no applied edit."""
    state, clean = base_state(model), outputs(model, batch)
    edit = model.edit(batch, language=language)
    assert not torch.equal(outputs(model, batch), clean)
    edit.revert()
    assert torch.equal(outputs(model, batch), clean)
    after = model.get_base_model().state_dict()
    assert all(torch.equal(state[key], after[key]) for key in state)
    assert model.base_model.applied_edit_ids == []


def check_save_load_reproduces(model, batch, family: str, folder: Path, language: str = "de") -> PeftModel:
    """`save_pretrained` + `PeftModel.from_pretrained` give the same outputs, before and after the same edit."""
    perturb_trainables(model)
    clean = outputs(model, batch)
    with model.edit(batch, language=language):
        edited = outputs(model, batch)
    model.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(build_model(family), folder)
    assert torch.equal(outputs(loaded, batch), clean)
    with loaded.edit(batch, language=language):
        assert torch.equal(outputs(loaded, batch), edited)
    return loaded


def check_files_written(model, folder: Path) -> None:
    """The adapter folder holds the config and the safetensors weights: adapter tensors only, never base weights,
    and the configuration the model was built with."""
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    saved = json.loads((folder / "adapter_config.json").read_text())
    config = model.peft_config["default"]
    assert saved["peft_type"] == "LIME" and saved["editor"] == config.editor
    assert saved["use_lime_mask"] == config.use_lime_mask and saved["mask_scope"] == config.mask_scope
    assert saved["languages"] == LANGS
    tensors = load_file(folder / "adapter_model.safetensors")
    assert tensors and all(".lime_" in key for key in tensors)
    assert not any("base_layer" in key or "embeddings" in key for key in tensors)
    masks = [key for key in tensors if "lime_masks" in key]
    assert bool(masks) == (config.use_lime_mask and config.editor != "ft")
    expected = {k for k, p in model.named_parameters() if p.requires_grad}
    assert len(tensors) >= len(expected) > 0


def check_passenger_rows_change_nothing(model, batch, task: str, language: str = "fr") -> None:
    """Rows riding along in the edit's capture forward (a training episode's retain rows) change neither the edit
    nor their own logits: the deltas equal an edit computed alone, the logits a forward of their own."""
    from hf_lime.head import target_logits

    passenger = make_batch(task, batch_size=3, seq_len=batch["input_ids"].shape[1] + 3, seed=1)
    perturb_trainables(model, scale=0.01)
    model.eval()
    tuner = model.base_model
    with torch.no_grad():
        alone = tuner.compute_edit(batch, language, task=task)
        riding = tuner.compute_edit(batch, language, passenger_inputs=passenger, task=task)
        own = target_logits(model, passenger, task)
    assert alone.info.passenger_logits is None
    torch.testing.assert_close(riding.info.passenger_logits.logits, own.logits, rtol=1e-5, atol=1e-5)
    assert riding.info.passenger_logits.counts == own.counts
    assert sorted(riding.deltas) == sorted(alone.deltas)
    for key, delta in alone.deltas.items():
        torch.testing.assert_close(riding.deltas[key].dense(), delta.dense(), rtol=1e-4, atol=1e-6)


def check_shared_prefix_episode(model, task: str) -> None:
    """A training episode whose rows run the unedited lower blocks once (`run_episode(prefix=...)`: the edit,
    update and retain rows of three widths prefilled in one forward) gives the loss, metrics and gradients of the
    episode without it, and its capture and edited forwards start at the first edited block for every row."""
    from hf_lime.prefix_cache import PrefixCache
    from hf_lime.trainer.episode import run_episode

    def part(seed: int, rows: int, seq_len: int, language: int) -> dict[str, torch.Tensor]:
        batch = make_batch(task, batch_size=rows, seq_len=seq_len, seed=seed)
        return {**batch, "lang_ids": torch.full((rows,), language)}

    episode = {"edit": part(1, 2, 6, 0), "update": part(2, 2, 9, 1), "retain": part(3, 3, 7, 2)}
    perturb_trainables(model, scale=0.01)
    model.train()
    cache = PrefixCache(model)
    runs = []
    for prefix in (None, cache):
        model.zero_grad()
        torch.manual_seed(0)  # the masks' training-mode samples
        out = run_episode(model, episode, task, c_edit=0.1, c_loc=1.0, c_l0=1.0, prefix=prefix)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        runs.append((out.loss.detach(), out.metrics, grads))
    assert (cache.misses, cache.hits, cache.bypassed) == (7, 10, 0)  # prefill 7 rows; capture 2 + 3, edited 2 + 3
    assert len(cache) == 0 and not cache._handles  # hooks off, rows freed after the episode
    (loss, metrics, grads), (shared_loss, shared_metrics, shared_grads) = runs
    torch.testing.assert_close(shared_loss, loss, rtol=1e-4, atol=1e-6)
    assert shared_metrics.keys() == metrics.keys()
    assert sorted(shared_grads) == sorted(grads) and grads
    for name, grad in grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def check_edit_many_reverts_bit_exactly(model, task: str) -> None:
    """A batch and a sequence of edits (`LimeModel.edit_many`, batches of different sizes and languages) change the
    outputs, and reverting the group (by `revert()` or by leaving its `with` block) restores the outputs and every
    base weight bit for bit, leaving no applied edit."""
    batches = [make_batch(task, seed=1), make_batch(task, batch_size=1, seed=2, target=9), make_batch(task, seed=3)]
    languages = ["en", ["fr"], ["de", "en"]]
    probe = make_batch(task, batch_size=3, seed=4)
    state, clean = base_state(model), outputs(model, probe)
    for mode in ("batch", "sequential"):
        group = model.base_model.edit_many(batches, languages, mode=mode)
        assert group.state == "applied" and len(group.edits) == len(batches)
        assert not torch.equal(outputs(model, probe), clean), mode
        group.revert()
        assert group.state == "reverted"
        with model.base_model.edit_many(batches, languages, mode=mode) as again:
            assert again.state == "applied" and model.base_model.applied_edit_ids  # (an edit may need no update)
        assert torch.equal(outputs(model, probe), clean), mode
        after = model.get_base_model().state_dict()
        assert all(torch.equal(state[key], after[key]) for key in state), mode
        assert model.base_model.applied_edit_ids == []
