"""The interactive demo (examples/app.py): its parsing, its edit/revert logic, and the Gradio app driven through
`gradio_client` as a browser would drive it."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import free_port
from test_editor import mlm_editor

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app_module():
    spec = importlib.util.spec_from_file_location("lime_app", REPO_ROOT / "examples" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lime_app"] = module
    spec.loader.exec_module(module)
    return module


PROMPTS = "en: Dante was born in [MASK] .\nfr: Dante est né à [MASK] .\nde: Dante wurde in [MASK] geboren ."


def _outputs(editor) -> torch.Tensor:
    """The model's logits on a fixed batch (edits are applied as deltas inside the layers)."""
    batch = editor.tokenizer(["Dante was born in [MASK] .", "Goethe ist in [MASK] geboren ."], return_tensors="pt",
                             padding=True)  # fmt: skip
    with torch.no_grad():
        return editor.model(**batch).logits


def test_parsing(app_module):
    langs = ["en", "fr", "de"]
    assert app_module.parse_prompts("fr: b [MASK]\n\nen: a [MASK]", langs) == {"en": "a [MASK]", "fr": "b [MASK]"}
    assert app_module.parse_answers("Lyon", langs) == {"en": "Lyon", "fr": "Lyon", "de": "Lyon"}
    assert app_module.parse_answers("en: Munich | de: München", langs) == {"en": "Munich", "fr": "Munich",
                                                                           "de": "München"}  # fmt: skip
    assert app_module.parse_answers("Paris: Texas", langs)["fr"] == "Paris: Texas"  # not a language: one form
    cases = [("xx: a [MASK]", "Unknown language 'xx'"), ("no colon", "one `lang: prompt`"), ("", "at least")]
    for text, match in cases:
        with pytest.raises(ValueError, match=match):
            app_module.parse_prompts(text, langs)
    with pytest.raises(ValueError, match="empty"):
        app_module.parse_answers("  ", langs)
    with pytest.raises(ValueError, match="lang: answer"):
        app_module.parse_answers("en: a | zz: b", langs)


def test_cldr_examples_name_things_as_the_editors_data_did(app_module):
    """The app's examples name things as the editor's data did: `make demo`'s each language's own names ("own"), an
    editor trained on English names in every template those."""
    own, own_candidates = app_module.cldr_examples(["en", "zh"], n=1, label_language="own")
    assert (own, own_candidates) == app_module.cldr_examples(["en", "zh"], n=1)  # older editors: None
    english, english_candidates = app_module.cldr_examples(["en", "zh"], n=1, label_language="en")
    assert own[0][0].splitlines()[0] == english[0][0].splitlines()[0]  # the same English prompt
    assert own_candidates["en"] == english_candidates["zh"] != own_candidates["zh"]
    zh_prompt = english[0][0].splitlines()[1]
    assert zh_prompt.startswith("zh: ") and any(c.isascii() and c.isalpha() for c in zh_prompt)


def test_edit_then_revert_restores_the_base_model(app_module, tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1.0)
    original = _outputs(editor)
    demo = app_module.EditDemo(editor)
    rows, figure, status = demo.edit(PROMPTS, "en", "Florence")
    assert [row[0] for row in rows] == ["en", "fr", "de"] and "holds in" in status
    assert len(figure.axes[0].texts) == 6  # languages × (before, after)
    assert not torch.equal(_outputs(editor), original)
    rows, _, status = demo.revert(PROMPTS, "Florence")
    assert status.startswith("Reverted") and rows[0][3] == rows[0][4]
    assert torch.equal(_outputs(editor), original)
    with pytest.raises(ValueError, match="No prompt in the editing language 'de'"):
        demo.edit("en: a [MASK] .", "de", "x")


@contextmanager
def served_app(app_module, tmp_path, monkeypatch):
    """The app on a fresh tiny editor, served on 127.0.0.1: `(client, editor, original outputs)`; closed on exit."""
    pytest.importorskip("gradio", reason="the app needs gradio (installed by the dev extra)")
    from gradio_client import Client

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    editor = mlm_editor(tmp_path, edit_lr_init=1.0)
    original = _outputs(editor)
    app = app_module.build_app(app_module.EditDemo(editor), examples=[[PROMPTS, "en", "Florence"]])
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(app.local_url, verbose=False), editor, original
    finally:
        app.close()


def test_the_gradio_app_answers_an_edit_request_through_its_client(app_module, tmp_path, monkeypatch):
    with served_app(app_module, tmp_path, monkeypatch) as (client, editor, original):
        table, plot, status = client.predict(PROMPTS, "fr", "fr: Florence | de: Florenz", api_name="/edit")
        assert [row[0] for row in table["data"]] == ["en", "fr", "de"]
        assert [row[2] for row in table["data"]] == ["Florence", "Florence", "Florenz"]
        assert "Edited in fr" in status and plot is not None
        assert not torch.equal(_outputs(editor), original)
        _, _, status = client.predict(PROMPTS, "Florence", api_name="/revert")
        assert status.startswith("Reverted")
        assert torch.equal(_outputs(editor), original)
        with pytest.raises(Exception, match="Unknown language 'xx'"):
            client.predict("xx: a [MASK] .", "en", "b", api_name="/edit")


EDITS = """en: Dante was born in [MASK] . => Florence
fr: Dante est né à [MASK] .
de: Dante wurde in [MASK] geboren . => Florenz

de: Goethe ist in [MASK] geboren . => Berlin
en: Goethe was born in [MASK] . => Berlin"""


def test_parsing_several_edits(app_module):
    langs = ["en", "fr", "de"]
    dante, goethe = app_module.parse_edit_blocks(EDITS + "\n\n\n", langs)
    assert dante.request == ("Dante was born in [MASK] .", "Florence", "en")
    assert list(dante.prompts) == langs and dante.answers == {"en": "Florence", "fr": "Florence", "de": "Florenz"}
    assert goethe.request == ("Goethe ist in [MASK] geboren .", "Berlin", "de")
    assert list(goethe.prompts) == ["en", "de"]  # the editor's order
    one = app_module.parse_edit_blocks("fr: a => b: c => d", langs)[0]  # the last arrow ends the prompt
    assert one.request == ("a => b: c", "d", "fr")
    cases = [
        ("", "at least one edit"),
        ("en: a [MASK] .", "needs its new answer"),
        ("xx: a [MASK] . => b", "language among"),
        ("en: a [MASK] . =>  ", "empty prompt or answer"),
        ("en: a [MASK] . => b\nen: c [MASK] .", "twice"),
        ("\n\n".join(f"en: p{i} [MASK] . => b" for i in range(3)), "at most 2"),
    ]
    for text, match in cases:
        with pytest.raises(ValueError, match=match):
            app_module.parse_edit_blocks(text, langs, max_edits=2)
    text = app_module.edits_text([[PROMPTS, "en", "Florence"], [PROMPTS, "en", "de: Florenz"]], langs)
    first, second = app_module.parse_edit_blocks(text, langs)
    assert first.language == "en" and second.language == "fr" and second.answers["de"] == "Florenz"


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_several_edits_then_revert_restores_the_base_model(app_module, tmp_path, mode):
    editor = mlm_editor(tmp_path, edit_lr_init=1.0)
    original = _outputs(editor)
    demo = app_module.EditDemo(editor)
    held, rows, status = demo.edit_many(EDITS, mode)
    assert demo.held_headers == ["edit", "en", "fr", "de"]
    assert [row[0] for row in held] == ["1. en: Dante was born in [MASK] . → Florence",
                                        "2. de: Goethe ist in [MASK] geboren . → Berlin"]  # fmt: skip
    assert held[1][2] == "" and all(cell.split(":")[0] in ("yes", "no") for cell in held[0][1:])
    assert [row[:2] for row in rows] == [["1", "en (edited)"], ["1", "fr"], ["1", "de"], ["2", "en"],
                                         ["2", "de (edited)"]]  # fmt: skip
    assert [row[6] == "yes" for row in rows[:3]] == [cell.startswith("yes") for cell in held[0][1:]]
    assert f"2 edit(s) applied ({mode})" in status and len(demo.edits) == 1
    assert not torch.equal(_outputs(editor), original)
    held, rows, status = demo.revert_many(EDITS)
    assert status.startswith("Reverted") and all(row[4] == row[5] for row in rows) and len(held) == 2
    assert torch.equal(_outputs(editor), original)
    assert demo.revert_many("") == ([], [], "Reverted: the base model, bit for bit.")


def test_the_gradio_app_makes_several_edits_through_its_client(app_module, tmp_path, monkeypatch):
    with served_app(app_module, tmp_path, monkeypatch) as (client, editor, original):
        held, rows, status = client.predict(EDITS, "batch", api_name="/edit_many")
        assert held["headers"] == ["edit", "en", "fr", "de"] and len(held["data"]) == 2
        assert len(rows["data"]) == 5 and "2 edit(s) applied (batch)" in status
        assert not torch.equal(_outputs(editor), original)
        table, _, status = client.predict(PROMPTS, "de", "Florenz", api_name="/edit")  # the single-edit tab stacks
        assert "Edited in de" in status and "2 edit(s) applied" in status
        _, _, status = client.predict(EDITS, api_name="/revert_many")  # reverts every edit, of both tabs
        assert status.startswith("Reverted") and torch.equal(_outputs(editor), original)
        with pytest.raises(Exception, match="needs its new answer"):
            client.predict("en: a [MASK] .", "batch", api_name="/edit_many")
