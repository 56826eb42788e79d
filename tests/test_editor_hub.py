"""`LimeEditor` on the Hub: real HTTP push/pull against the local Hub-protocol server, revisions, offline cache."""

from __future__ import annotations

import pytest
import torch
from hub_server import hub_offline_mode, patched_hub_cache, populate_cache, running_hub
from test_editor import logits, mlm_editor, perturb, text_batch

from hf_lime.editor import LimeEditor

REPO = "hf-lime/tiny-editor"
EDITOR_FILES = {
    "README.md", "adapter_config.json", "adapter_model.safetensors", "lime_editor.json", "tokenizer.json",
    "tokenizer_config.json",
}  # fmt: skip
PROMPT = "Dante was born in [MASK] ."


def push(editor: LimeEditor, **kwargs):
    with pytest.warns(UserWarning, match="local base model"):  # tests use base models saved in tmp folders
        return editor.push_to_hub(REPO, token="hf_test", **kwargs)


def edited(editor: LimeEditor, batch: dict) -> torch.Tensor:
    """Outputs after an edit: what the adapter's weights decide (without an edit the base model is untouched)."""
    with editor.edit(PROMPT, "Lyon", language="de"):
        return logits(editor, batch)


def test_push_pull_revisions_then_offline_from_the_cache(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1.0, mend_init="random")
    perturb(editor)
    editor.metrics = {"edit_success": 0.5}
    batch = text_batch(editor.tokenizer)
    clean, v1 = logits(editor, batch), edited(editor, batch)
    with running_hub(tmp_path) as hub:
        first = push(editor, commit_message="first editor")
        assert set(hub.files(REPO)) == EDITOR_FILES | {".gitattributes"}
        assert b"library_name: hf_lime" in hub.files(REPO)["README.md"]
        pulled = LimeEditor.from_pretrained(REPO)  # base model from `base_model_name_or_path` (a local folder)
        assert torch.equal(logits(pulled, batch), clean) and torch.equal(edited(pulled, batch), v1)
        assert pulled.metrics == {"edit_success": 0.5}

        perturb(editor, seed=1)
        editor.metrics = {"edit_success": 0.75}
        v2 = edited(editor, batch)
        assert not torch.equal(v1, v2)
        second = push(editor)
        assert second.oid != first.oid and hub.branch_history(REPO)[-2:] == [first.oid, second.oid]
        assert torch.equal(edited(LimeEditor.from_pretrained(REPO), batch), v2)
        pinned = LimeEditor.from_pretrained(REPO, revision=first.oid)
        assert torch.equal(edited(pinned, batch), v1) and pinned.metrics == {"edit_success": 0.5}

        third = push(editor, revision="dev")
        assert hub.branch_history(REPO, "dev")[-1] == third.oid and hub.branch_history(REPO)[-1] == second.oid
        assert torch.equal(edited(LimeEditor.from_pretrained(REPO, revision="dev"), batch), v2)
        cache_dir = hub.cache_dir

    # The server is stopped and the client patches are undone: only the cache is left.
    with patched_hub_cache(cache_dir), hub_offline_mode(True):
        assert torch.equal(edited(LimeEditor.from_pretrained(REPO), batch), v2)
        assert torch.equal(edited(LimeEditor.from_pretrained(REPO, revision=first.oid), batch), v1)
    offline = LimeEditor.from_pretrained(REPO, cache_dir=cache_dir, local_files_only=True)
    assert torch.equal(edited(offline, batch), v2)


def test_load_org_name_from_a_prepopulated_cache(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1.0)
    perturb(editor)
    folder = editor.save_pretrained(tmp_path / "editor")
    cache = tmp_path / "hf_home" / "hub"
    populate_cache(cache, "org/cached-editor", {p.name: p for p in folder.iterdir()})
    batch = text_batch(editor.tokenizer)
    with patched_hub_cache(cache), hub_offline_mode(True):
        loaded = LimeEditor.from_pretrained("org/cached-editor")
    assert torch.equal(edited(loaded, batch), edited(editor, batch))
    assert loaded.tokenizer.get_vocab() == editor.tokenizer.get_vocab()
