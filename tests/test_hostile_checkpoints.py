"""Bad and hostile editors: every case is a clear ValueError, nothing is executed, nothing is half-loaded."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import peft.peft_model
import pytest
import torch
from hub_server import hub_offline_mode, patched_hub_cache, running_hub
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from safetensors.torch import load_file, save_file
from test_editor import LANGS, logits, mlm_editor, perturb, text_batch, tiny_bert, tiny_classifier
from transformers import BertForMaskedLM

from hf_lime import LimeLayer
from hf_lime.editor import LimeEditor

WEIGHTS, CONFIG, METADATA = "adapter_model.safetensors", "adapter_config.json", "lime_editor.json"


class CreatesMarker:
    """Unpickling this object opens (creates) a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def saved(tmp_path) -> Path:
    editor = mlm_editor(tmp_path)
    perturb(editor)
    return editor.save_pretrained(tmp_path / "editor")


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rewrite_tensors(folder: Path, change) -> None:
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS)


def logits_after_edit(editor: LimeEditor, batch: dict) -> torch.Tensor:
    with editor.edit("Dante was born in [MASK] .", "Lyon", language="en"):
        return logits(editor, batch)


def assert_untouched(base: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """The user's base model is exactly as before a failed load: no adapter layer, no PEFT attribute, same weights."""
    assert not any(isinstance(m, LimeLayer) for m in base.modules())
    assert "peft_config" not in vars(base)
    state = base.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c: c.update(peft_type="LORA"), "peft_type='LORA'"),
        (lambda c: c.pop("languages"), r"missing the required field\(s\) \['languages'\]"),
        (lambda c: c.pop("base_model_name_or_path"), r"\['base_model_name_or_path'\]"),
        (lambda c: c.update(languages=["en", "fr", "en"]), r"duplicate languages \['en'\]"),
        (lambda c: c.update(languages="enfrde"), "must be a list of language codes"),
        (lambda c: c.update(languages=["en", "", "de"]), "list of non-empty language codes"),
        (
            lambda c: c.update(languages=["en", "fr", "de", "zh"]),
            "saved with \\[.en., .fr., .de.\\]",
        ),  # order recorded at save
        (lambda c: c.update(target_modules=7), "target_modules"),
        (lambda c: c.update(editor="rome"), "Invalid adapter_config.json.*editor"),
        (lambda c: c.update(mask_stretch=[0.5, 0.9]), "Invalid adapter_config.json.*mask_stretch"),
    ],
)
def test_invalid_adapter_configs_are_refused(saved, change, match):
    edit_json(saved / CONFIG, change)
    with pytest.raises(ValueError, match=match):
        LimeEditor.from_pretrained(saved)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe\x00", b""])
def test_config_that_is_not_a_json_object_is_refused(saved, content):
    (saved / CONFIG).write_bytes(content)
    with pytest.raises(ValueError, match="adapter_config.json"):
        LimeEditor.from_pretrained(saved)


def test_unknown_config_fields_warn_and_are_ignored(saved):
    edit_json(saved / CONFIG, lambda c: c.update(future_option=3))
    with pytest.warns(UserWarning, match=r"does not know, ignored: \['future_option'\]"):
        assert LimeEditor.from_pretrained(saved).languages == LANGS


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: m.update(format="something-else"), "not an hf_lime editor description"),
        (lambda m: m.update(format_version=99), "format_version=99"),
        (lambda m: m.update(task="translation"), "task='translation'"),
        (lambda m: m.update(metrics=[1, 2]), "`metrics`.*JSON object"),
    ],
)
def test_invalid_editor_metadata_is_refused(saved, change, match):
    edit_json(saved / METADATA, change)
    with pytest.raises(ValueError, match=match):
        LimeEditor.from_pretrained(saved)


# ----------------------------------------------------------------------------------------------- weights
def test_truncated_or_garbage_safetensors_are_refused(saved):
    data = (saved / WEIGHTS).read_bytes()
    for content in (data[: len(data) // 2], data[:5], b"\x00" * 64, struct.pack("<Q", 10**9) + b"{}"):
        (saved / WEIGHTS).write_bytes(content)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            LimeEditor.from_pretrained(saved)


def test_non_finite_weights_are_refused(saved):
    rewrite_tensors(saved, lambda t: t[next(k for k in sorted(t) if "scale" in k)].fill_(float("nan")))
    with pytest.raises(ValueError, match="non-finite values"):
        LimeEditor.from_pretrained(saved)


def test_missing_extra_and_misshapen_tensors_are_listed(saved):
    names = sorted(load_file(saved / WEIGHTS))
    original = (saved / WEIGHTS).read_bytes()
    rewrite_tensors(saved, lambda t: t.pop(names[0]))
    with pytest.raises(ValueError, match=rf"missing tensors \['{names[0]}'\]"):
        LimeEditor.from_pretrained(saved)
    (saved / WEIGHTS).write_bytes(original)
    rewrite_tensors(
        saved, lambda t: t.update({"base_model.model.bert.embeddings.word_embeddings.weight": t[names[0]].clone()})
    )
    with pytest.raises(ValueError, match="unexpected tensors.*word_embeddings"):
        LimeEditor.from_pretrained(saved)
    (saved / WEIGHTS).write_bytes(original)
    rewrite_tensors(saved, lambda t: t.update({names[-1]: torch.zeros(7, 5)}))
    with pytest.raises(ValueError, match=rf"`{names[-1]}` has shape \[7, 5\]"):
        LimeEditor.from_pretrained(saved)


def test_failed_load_leaves_the_users_base_model_untouched(saved, tmp_path):
    base = BertForMaskedLM.from_pretrained(tmp_path / "base").eval()
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    rewrite_tensors(saved, lambda t: t.pop(sorted(t)[0]))
    with pytest.raises(ValueError, match="missing tensors"):
        LimeEditor.from_pretrained(saved, base_model=base)
    assert_untouched(base, reference)
    # The same base model then loads a good editor normally.
    good = mlm_editor(tmp_path).save_pretrained(tmp_path / "good")
    assert LimeEditor.from_pretrained(good, base_model=base).model.get_base_model() is base


# ----------------------------------------------------------------------------------------------- base model
def test_editor_for_another_base_model_is_refused(saved, tmp_path):
    tokenizer = mlm_editor(tmp_path).tokenizer
    wider = tiny_bert(tokenizer, hidden=32)
    reference = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match="trained for another base model: hidden_size: 16 .editor. vs 32"):
        LimeEditor.from_pretrained(saved, base_model=wider)
    assert_untouched(wider, reference)
    with pytest.raises(
        ValueError, match="architecture: 'BertForMaskedLM' .editor. vs 'BertForSequenceClassification'"
    ):
        LimeEditor.from_pretrained(saved, base_model=tiny_classifier(tokenizer))
    # Without lime_editor.json the tensor shapes still give it away, before any weight is loaded.
    (saved / METADATA).unlink()
    with pytest.raises(ValueError, match="does not fit this base model.*has shape"):
        LimeEditor.from_pretrained(saved, base_model=wider)
    assert_untouched(wider, reference)


def test_a_base_model_folder_named_by_the_config_must_exist(saved, tmp_path):
    edit_json(saved / CONFIG, lambda c: c.update(base_model_name_or_path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="Could not load the base model"):
        LimeEditor.from_pretrained(saved)
    edit_json(saved / CONFIG, lambda c: c.update(base_model_name_or_path=None))
    with pytest.raises(ValueError, match="names no base model"):
        LimeEditor.from_pretrained(saved)


# ----------------------------------------------------------------------------------------------- pickles
def test_pickle_in_place_of_safetensors_is_never_unpickled(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": CreatesMarker(marker)})
    (saved / WEIGHTS).unlink()
    (saved / "adapter_model.bin").write_bytes(payload)
    with pytest.raises(ValueError, match=r"only \['adapter_model.bin'\]. hf_lime only loads safetensors"):
        LimeEditor.from_pretrained(saved)
    assert not marker.exists()
    (saved / WEIGHTS).write_bytes(payload)  # a pickle disguised as safetensors
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        LimeEditor.from_pretrained(saved)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling it does create the marker
    assert marker.exists()


def test_pickles_next_to_safetensors_are_ignored(saved, tmp_path):
    marker = tmp_path / "pwned"
    for name in ("adapter_model.bin", "training_args.bin", "optimizer.pt"):
        (saved / name).write_bytes(pickle.dumps(CreatesMarker(marker)))
    assert LimeEditor.from_pretrained(saved).languages == LANGS
    assert not marker.exists()


def test_base_model_with_only_a_pickle_checkpoint_is_not_loaded(saved, tmp_path):
    marker = tmp_path / "pwned"
    base = tmp_path / "base"
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(pickle.dumps(CreatesMarker(marker)))
    with pytest.raises(ValueError, match="Could not load the base model"):
        LimeEditor.from_pretrained(saved)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- Hub
def test_unknown_repo_revision_or_uncached_editor_is_a_value_error(saved, tmp_path):
    with running_hub(tmp_path) as hub:
        with pytest.raises(ValueError, match="No editor 'org/missing'") as err:
            LimeEditor.from_pretrained("org/missing")
        assert isinstance(err.value.__cause__, RepositoryNotFoundError)
        hub.create_repo("org/editor")
        with pytest.raises(ValueError, match="Revision 'v9' does not exist in the Hub repo 'org/editor'") as err:
            LimeEditor.from_pretrained("org/editor", revision="v9")
        assert isinstance(err.value.__cause__, RevisionNotFoundError)
        with pytest.raises(ValueError, match="No adapter_config.json"):  # a repo that holds no editor
            LimeEditor.from_pretrained("org/editor")
    with patched_hub_cache(tmp_path / "empty-cache"), hub_offline_mode(True):
        with pytest.raises(ValueError, match="not in the local Hub cache"):
            LimeEditor.from_pretrained("org/never-downloaded")
    with pytest.raises(ValueError, match="neither an existing local folder nor a valid Hub repo id"):
        LimeEditor.from_pretrained(str(tmp_path / "missing" / "folder"))


# ----------------------------------------------------------------------------------------------- saving
def test_a_failed_save_leaves_the_earlier_files_intact(tmp_path, monkeypatch):
    editor = mlm_editor(tmp_path, edit_lr_init=1.0)
    folder = editor.save_pretrained(tmp_path / "editor")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    perturb(editor)
    editor.metrics = {"edit_success": 1.0}

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        editor.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".editor.tmp")] == []  # no leftovers
    monkeypatch.undo()
    editor.save_pretrained(folder)
    assert json.loads((folder / METADATA).read_text())["metrics"] == {"edit_success": 1.0}
    batch, reloaded = text_batch(editor.tokenizer), LimeEditor.from_pretrained(folder)
    for model in (editor, reloaded):
        with model.edit("Dante was born in [MASK] .", "Lyon", language="en"):
            outputs = logits(model, batch)
    assert torch.equal(outputs, logits_after_edit(editor, batch))


# ------------------------------------------------------------------------------------------------ plain PEFT loads
def _saved_adapter(tmp_path):
    from conftest import build_model
    from peft import get_peft_model

    from hf_lime import LimeConfig

    model = get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en", "fr"], mend_rank=8))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _rewrite(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items() if "log_lrs" in k}), "NaN"),
        (lambda t: t.pop(next(k for k in t if "norm_x.weight" in k)), "missing tensors"),
        (
            lambda t: t.update(
                {k: torch.full_like(v, 1e300, dtype=torch.float64) for k, v in t.items() if "log_lrs" in k}
            ),
            "after the cast",
        ),  # fmt: skip
    ],
)
def test_peft_from_pretrained_runs_the_checks_too(tmp_path, change, match):
    from conftest import build_model
    from peft import PeftModel

    folder = _saved_adapter(tmp_path)
    _rewrite(folder, change)
    with pytest.raises(ValueError, match=match):
        PeftModel.from_pretrained(build_model("bert-mlm"), folder)
