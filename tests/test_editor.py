"""`LimeEditor`: task inference, text-level edits and predictions, save/load round trips, model card, atomic save."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from conftest import build_model
from helpers_tokenizers import build_byte_bpe_tokenizer, build_sentencepiece_tokenizer, build_wordpiece_tokenizer
from peft import get_peft_model
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from hf_lime import LimeConfig
from hf_lime.data.encoding import encode_example, pad_batch
from hf_lime.editor import LimeEditor, infer_task, masked_prompt
from hf_lime.model_card import render_model_card

LANGS = ["en", "fr", "de"]
NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}
# A fine-tuning editor that reliably makes the tiny models give the new target (measured: 2-6 steps).
FT = {"editor": "ft", "ft_steps": 40, "ft_lr": 0.05, "ft_optimizer": "adam", "use_lime_mask": False, "languages": []}
PROMPT = "The capital of France is [MASK] ."


# ----------------------------------------------------------------------------------------------- builders
def tiny_bert(tokenizer: PreTrainedTokenizerFast, cls=BertForMaskedLM, seed: int = 0, hidden: int = 16, **kwargs):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, attn_implementation="eager", **kwargs,
    )  # fmt: skip
    return cls(config).eval()


def tiny_classifier(tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    labels = {"num_labels": 3, "id2label": NLI_LABELS, "label2id": {v: k for k, v in NLI_LABELS.items()}}
    return tiny_bert(tokenizer, BertForSequenceClassification, seed=seed, **labels)


def tiny_gpt2(tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def saved_base(folder: Path, model, tokenizer) -> Path:
    """Save a base model + tokenizer and return the folder (what `base_model_name_or_path` will name)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mlm_editor(tmp_path: Path, seed: int = 0, **config) -> LimeEditor:
    """A LIME editor on a tiny BERT MLM loaded from `tmp_path/base` (so it knows its base model's folder)."""
    tokenizer = build_wordpiece_tokenizer()
    base_dir = tmp_path / "base"
    if not base_dir.exists():
        saved_base(base_dir, tiny_bert(tokenizer, seed=seed), tokenizer)
    config.setdefault("languages", LANGS)
    return LimeEditor.from_base_model(
        BertForMaskedLM.from_pretrained(base_dir).eval(), LimeConfig(**config), tokenizer
    )


def text_batch(tokenizer: PreTrainedTokenizerFast) -> dict:
    prompts = [("Dante was born in [Y] .", "Florence"), ("Goethe ist in [Y] geboren .", "Berlin")]
    return pad_batch(tokenizer, [encode_example(tokenizer, "masked_lm", p, t) for p, t in prompts])


def logits(editor: LimeEditor, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return editor.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# ----------------------------------------------------------------------------------------------- task
@pytest.mark.parametrize(
    "family,task",
    [("bert-mlm", "masked_lm"), ("xlmr-mlm", "masked_lm"), ("bert-cls", "seq_cls"), ("gpt2", "causal_lm"),
     ("llama", "causal_lm")],
)  # fmt: skip
def test_task_is_inferred_from_the_model_class(family, task):
    assert infer_task(build_model(family)) == task
    assert LimeEditor(get_peft_model(build_model(family), LimeConfig(languages=LANGS))).task == task


def test_task_falls_back_to_the_class_name_suffix_and_refuses_unknown_classes():
    class MyEncoderForMaskedLM(BertForMaskedLM):  # in no Auto mapping
        pass

    model = MyEncoderForMaskedLM(build_model("bert-mlm").config)
    assert infer_task(model) == "masked_lm"
    with pytest.raises(ValueError, match="Cannot tell the task of a Sequential"):
        infer_task(torch.nn.Sequential())


def test_editor_needs_a_lime_peft_model():
    with pytest.raises(TypeError, match="PeftModel with a LIME adapter"):
        LimeEditor(build_model("bert-mlm"))
    with pytest.raises(ValueError, match="Unknown task"):
        LimeEditor(get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS)), task="translation")
    with pytest.raises(ValueError, match="JSON values"):
        LimeEditor(get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS)), metrics={"es": object()})


# ----------------------------------------------------------------------------------------------- placeholders
def test_masked_prompt_accepts_every_placeholder_form():
    wordpiece, sentencepiece = build_wordpiece_tokenizer(), build_sentencepiece_tokenizer()
    assert masked_prompt("Paris is [MASK] .", wordpiece) == ("Paris is [Y] .", 1)
    assert masked_prompt("Paris is [Y] .", wordpiece) == ("Paris is [Y] .", 1)
    assert masked_prompt("Paris is [MASK] [MASK] .", wordpiece) == ("Paris is [Y] .", 2)
    assert masked_prompt("Paris is <mask>.", sentencepiece) == ("Paris is [Y].", 1)
    assert masked_prompt("Paris is [MASK].", sentencepiece) == ("Paris is [Y].", 1)  # "[MASK]" works everywhere
    for bad in ("no placeholder", "[MASK] is the capital of [MASK] ."):
        with pytest.raises(ValueError, match="exactly one placeholder"):
            masked_prompt(bad, wordpiece)


def test_text_edit_builds_the_same_batch_as_encode_example(tmp_path):
    """ "[MASK]" and "[Y]" give the same edit: one mask per target token (Florence = 2 pieces)."""
    editor = mlm_editor(tmp_path, **FT)
    tokenizer = editor.tokenizer
    expected = pad_batch(tokenizer, [encode_example(tokenizer, "masked_lm", "Dante was born in [Y] .", "Florence")])
    reference = editor.model.base_model.edit(expected).revert().deltas
    assert reference
    for text in ("Dante was born in [MASK] .", "Dante was born in [Y] .", "Dante was born in [MASK] [MASK] ."):
        edit = editor.edit(text, "Florence").revert()
        assert edit.deltas.keys() == reference.keys()
        for key, delta in reference.items():
            torch.testing.assert_close(edit.deltas[key].dense(), delta.dense())
    with pytest.raises(ValueError, match="3 masks but the target 'Florence' has 2 tokens"):
        editor.edit("Dante was born in [MASK] [MASK] [MASK] .", "Florence")


# ----------------------------------------------------------------------------------------------- edit + predict
def test_masked_lm_edit_changes_the_prediction_and_revert_restores_it(tmp_path):
    editor = mlm_editor(tmp_path, **FT)
    before = editor.predict(PROMPT)
    assert before != "Lyon"
    edit = editor.edit(PROMPT, "Lyon")
    assert editor.predict(PROMPT) == "Lyon"
    assert editor.predict([PROMPT, "The capital of France is [Y] ."]) == ["Lyon", "Lyon"]
    edit.revert()
    assert editor.predict(PROMPT) == before
    with editor.edit("The capital of France is [MASK] .", "Florence"):
        assert editor.predict(PROMPT, num_tokens=2) == "Florence"
        assert editor.predict("The capital of France is [MASK] [MASK] .") == "Florence"
    assert editor.predict(PROMPT) == before


def test_invalid_unicode_and_a_malformed_tokenizer_are_refused_clearly(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1e-3)
    with pytest.raises(ValueError, match="lone surrogate"):
        editor.edit("The capital \ud800 of France is [MASK] .", "Lyon", language="en")
    with pytest.raises(ValueError, match="lone surrogate"):
        editor.predict("x \udc00 [MASK] .")
    folder = editor.save_pretrained(tmp_path / "saved")
    (folder / "tokenizer.json").write_text("[]")
    with pytest.raises(ValueError, match="Could not load a tokenizer"):
        LimeEditor.from_pretrained(folder)


def test_a_reordered_or_renamed_language_list_is_refused_unless_mapped(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1e-3)  # languages en, fr, de
    folder = editor.save_pretrained(tmp_path / "saved")
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["languages"] = ["fr", "en", "de"]  # tampered: mask rows would serve other languages
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="saved with \\['en', 'fr', 'de'\\]"):
        LimeEditor.from_pretrained(folder)
    config["languages"] = ["en-GB", "fr", "de"]  # renamed
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rename_languages"):
        LimeEditor.from_pretrained(folder)
    loaded = LimeEditor.from_pretrained(folder, rename_languages={"en": "en-GB"})
    assert loaded.languages == ["en-GB", "fr", "de"]


def test_predict_ranks_candidates(tmp_path):
    editor = mlm_editor(tmp_path, **FT)
    choices = ["Paris", "Lyon", "Florence"]  # 1, 1 and 2 tokens
    before = editor.predict(PROMPT, candidates=choices)
    assert before in choices
    with editor.edit(PROMPT, "Florence"):
        assert editor.predict(PROMPT, candidates=choices) == "Florence"
        assert editor.predict([PROMPT, PROMPT], candidates=choices) == ["Florence", "Florence"]
    assert editor.predict(PROMPT, candidates=choices) == before
    with pytest.raises(ValueError, match="non-empty list"):
        editor.predict(PROMPT, candidates="Paris")
    with pytest.raises(ValueError, match="non-empty list"):
        editor.predict(PROMPT, candidates=[])


def test_batched_text_edit_with_one_language_per_row(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1e-3)  # an untrained MEND editor with LiME masks
    texts = ["The capital of France is [MASK] .", "La capitale de la France est [MASK] ."]
    tokenizer = editor.tokenizer
    batch = pad_batch(
        tokenizer, [encode_example(tokenizer, "masked_lm", t.replace("[MASK]", "[Y]"), "Lyon") for t in texts]
    )
    loss_before = editor.model(**batch).loss
    edit = editor.edit(texts, ["Lyon", "Lyon"], language=["en", "fr"])
    assert edit.info.languages == ["en", "fr"]
    assert editor.model(**batch).loss < loss_before
    edit.revert()
    with pytest.raises(ValueError, match="Unknown language"):
        editor.edit(texts[0], "Lyon", language="xx")
    with pytest.raises(ValueError, match="Pass the editing `language`"):
        editor.edit(texts[0], "Lyon")


def _edited_logits(editor: LimeEditor, batch: dict, *args, **kwargs) -> torch.Tensor:
    with editor.edit(*args, **kwargs):
        return logits(editor, batch)


def test_answers_and_prompts_given_per_language_are_one_batched_edit_of_those_rows(tmp_path):
    """`edit(prompt, {lang: answer})` and `edit({lang: prompt}, {lang: answer})` are the list edits of their rows."""
    editor = mlm_editor(tmp_path, edit_lr_init=1e-3)
    prompts = {"en": "The capital of France is [MASK] .", "fr": "La capitale de la France est [MASK] ."}
    answers = {"en": "Lyon", "fr": "Marseille"}
    probe = text_batch(editor.tokenizer)
    clean = logits(editor, probe)
    mean = {"combine": "mean"}  # one fact given per language: MEND's rows share one step by default
    cases = [
        ((prompts["en"], answers), {"language": "en"},
         ([prompts["en"]] * 2, ["Lyon", "Marseille"]), {"language": "en", **mean}),
        ((prompts, answers), {}, (list(prompts.values()), ["Lyon", "Marseille"]), {"language": ["en", "fr"], **mean}),
        ((prompts, "Lyon"), {}, (list(prompts.values()), ["Lyon", "Lyon"]), {"language": ["en", "fr"], **mean}),
        ((prompts, answers), {"combine": "sum"}, (list(prompts.values()), ["Lyon", "Marseille"]),
         {"language": ["en", "fr"]}),
    ]  # fmt: skip
    for args, kwargs, list_args, list_kwargs in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            by_language = _edited_logits(editor, probe, *args, **kwargs)
        competing = not isinstance(args[0], dict)  # one prompt, two different answers
        assert any("give each language's prompt too" in str(w.message) for w in caught) == competing
        assert not torch.equal(by_language, clean)
        torch.testing.assert_close(by_language, _edited_logits(editor, probe, *list_args, **list_kwargs))
    edit = editor.edit(prompts, answers)
    assert edit.info.languages == ["en", "fr"] and editor.model.base_model.applied_edit_ids == [edit.id]
    edit.revert()
    assert torch.equal(logits(editor, probe), clean)


def test_combine_mean_divides_mends_summed_batch_update_by_its_rows(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1e-3)
    prompts = {"en": "The capital of France is [MASK] .", "fr": "La capitale de la France est [MASK] ."}
    answers = {"en": "Lyon", "fr": "Marseille"}
    with editor.edit(prompts, answers, combine="sum") as summed:
        total = {name: delta.dense() for name, delta in summed.deltas.items()}
    with editor.edit(prompts, answers, combine="mean") as mean:
        assert set(mean.deltas) == set(total)
        for name, delta in mean.deltas.items():
            torch.testing.assert_close(delta.dense(), total[name] / 2)
    with editor.edit(prompts, answers) as default:  # one fact per language: the rows share one step
        for name, delta in default.deltas.items():
            torch.testing.assert_close(delta.dense(), total[name] / 2)
    with pytest.raises(ValueError, match=r"must be one of \['sum', 'mean', 'solve'\]"):
        editor.edit(prompts, answers, combine="max")
    ft = mlm_editor(tmp_path, **FT)
    with pytest.raises(ValueError, match="does not sum its rows"):
        ft.edit(PROMPT, "Lyon", combine="mean")
    assert editor.model.base_model.applied_edit_ids == [] and ft.model.base_model.applied_edit_ids == []


@pytest.mark.parametrize(
    "text,target,language,error,match",
    [
        (PROMPT, {}, "en", ValueError, "non-empty dict keyed by language code"),
        (PROMPT, {"": "Lyon"}, "en", ValueError, "non-empty dict keyed by language code"),
        ({"en": PROMPT, "fr": PROMPT}, {"en": "Lyon"}, None, ValueError, r"answers' languages \['en'\] differ"),
        ({"en": PROMPT}, "Lyon", "en", ValueError, "leave `language` out"),
        ([PROMPT, PROMPT], {"en": "Lyon"}, "en", TypeError, "edits one prompt"),
        (PROMPT, {"en": "Lyon", "fr": "Paris"}, ["en", "fr"], TypeError, "edits one prompt"),
        ({"en": PROMPT, "xx": PROMPT}, "Lyon", None, ValueError, "Unknown language"),
        (PROMPT, {"en": "Lyon", "fr": ""}, "en", ValueError, "non-empty string"),
    ],
)
def test_bad_per_language_edits_are_refused_and_change_nothing(tmp_path, text, target, language, error, match):
    editor = mlm_editor(tmp_path, edit_lr_init=1e-3)
    probe = text_batch(editor.tokenizer)
    clean = logits(editor, probe)
    with pytest.raises(error, match=match):
        editor.edit(text, target, language=language)
    assert editor.model.base_model.applied_edit_ids == []
    assert torch.equal(logits(editor, probe), clean)


def test_classifier_edit_takes_label_names_ids_and_sentence_pairs(tmp_path):
    tokenizer = build_wordpiece_tokenizer()
    editor = LimeEditor.from_base_model(tiny_classifier(tokenizer), LimeConfig(**FT), tokenizer)
    pair = ("a man sleeps .", "a dog runs .")
    before = editor.predict(pair)
    assert before in NLI_LABELS.values()
    new = next(label for label in NLI_LABELS.values() if label != before)
    with editor.edit(pair, new):
        assert editor.predict(pair) == new
    assert editor.predict(pair) == before
    new_id = next(i for i, label in NLI_LABELS.items() if label != before)
    with editor.edit([pair, "a woman runs ."], [new_id, new_id]):
        assert editor.predict([pair]) == [NLI_LABELS[new_id]]
    with pytest.raises(ValueError, match="Unknown class label 'maybe'"):
        editor.edit(pair, "maybe")


def test_causal_lm_edit_sets_the_greedy_continuation(tmp_path):
    tokenizer = build_byte_bpe_tokenizer()
    editor = LimeEditor.from_base_model(tiny_gpt2(tokenizer), LimeConfig(**FT), tokenizer)
    assert editor.task == "causal_lm"
    before = editor.predict("Dante was born in", max_new_tokens=1)
    target = "Lyon" if before != "Lyon" else "Paris"
    with editor.edit("Dante was born in", target):
        assert editor.predict("Dante was born in", max_new_tokens=1) == target
        assert editor.predict("Dante was born in [Y]", max_new_tokens=1) == target
    assert editor.predict("Dante was born in", max_new_tokens=1) == before
    assert len(tokenizer(" " + editor.predict("Dante was born in", max_new_tokens=3))["input_ids"]) <= 3


def test_causal_predictions_equal_a_greedy_loop_with_and_without_an_edit():
    """`predict` goes through `model.generate` (KV cache): the same tokens as argmax-decoding step by step."""
    tokenizer = build_byte_bpe_tokenizer()
    editor = LimeEditor.from_base_model(tiny_gpt2(tokenizer), LimeConfig(**FT), tokenizer)
    prompt = "Dante was born in"

    def greedy(steps: int) -> str:
        ids = tokenizer(prompt)["input_ids"]
        for _ in range(steps):
            with torch.no_grad():
                next_id = int(editor.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            ids.append(next_id)
        return tokenizer.decode(ids[len(tokenizer(prompt)["input_ids"]) :], skip_special_tokens=True).strip()

    assert editor.predict(prompt, max_new_tokens=5) == greedy(5)
    with editor.edit(prompt, "Lyon"):
        assert editor.predict(prompt, max_new_tokens=5) == greedy(5)


@pytest.mark.parametrize(
    "text,target,error,match",
    [
        (PROMPT, "", ValueError, "non-empty string"),
        (PROMPT, "   ", ValueError, "non-empty string"),
        (PROMPT, 3, TypeError, "must be a non-empty string"),
        ([PROMPT, PROMPT], ["Lyon"], ValueError, "same length"),
        ([], [], ValueError, "non-empty list"),
        (PROMPT, ["Lyon"], TypeError, "needs a list of texts"),
        (("a", "b"), "Lyon", TypeError, "string prompt"),
    ],
)
def test_bad_edit_requests_raise_before_anything_changes(tmp_path, text, target, error, match):
    editor = mlm_editor(tmp_path, **FT)
    clean = editor.predict(PROMPT)
    with pytest.raises(error, match=match):
        editor.edit(text, target)
    assert editor.model.base_model.applied_edit_ids == []
    assert editor.predict(PROMPT) == clean


def test_text_methods_need_a_tokenizer():
    editor = LimeEditor(get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS)))
    with pytest.raises(ValueError, match="no tokenizer"):
        editor.edit(PROMPT, "Lyon", language="en")
    with pytest.raises(ValueError, match="no tokenizer"):
        editor.predict(PROMPT)


def test_evaluate_forwards_to_the_evaluation_harness(monkeypatch):
    calls = []
    fake = types.ModuleType("hf_lime.evaluation")
    fake.evaluate_editor = lambda *args, **kwargs: calls.append((args, kwargs)) or "result"
    monkeypatch.setitem(sys.modules, "hf_lime.evaluation", fake)
    editor = LimeEditor(get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS)), tokenizer="tok")
    assert editor.evaluate(["item"], n_edits=3, seed=1) == "result"
    (args, kwargs), = calls  # fmt: skip
    assert args == (editor.model, "tok", ["item"]) and kwargs == {"task": "masked_lm", "n_edits": 3, "seed": 1}


# ----------------------------------------------------------------------------------------------- save / load
def perturb(editor: LimeEditor, scale: float = 0.3, seed: int = 0) -> None:
    """Make the adapter's weights non-trivial (a trained editor is not at its initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in editor.model.named_parameters():
            if ".lime_" in name and p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=g))


def test_save_and_load_round_trip_reproduces_outputs_and_edits(tmp_path):
    editor = mlm_editor(tmp_path, edit_lr_init=1.0, mend_init="random", languages=["zh", "en", "fr"])
    perturb(editor)
    editor.training_info = {"dataset": "mlama", "steps": 12, "languages": ["zh", "en", "fr"]}
    editor.metrics = {"en": {"es": 0.9, "loc": 0.8}, "fr": {"es": 0.7, "loc": 0.85}}
    batch = text_batch(editor.tokenizer)
    clean = logits(editor, batch)
    with editor.edit(PROMPT, "Lyon", language="fr"):
        edited = logits(editor, batch)
    folder = editor.save_pretrained(tmp_path / "editor")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "lime_editor.json", "tokenizer.json",
        "tokenizer_config.json",
    ]  # fmt: skip
    loaded = LimeEditor.from_pretrained(folder)  # base model and tokenizer found from the saved files
    assert loaded.task == "masked_lm" and loaded.languages == ["zh", "en", "fr"]
    assert loaded.training_info == editor.training_info and loaded.metrics == editor.metrics
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert torch.equal(logits(loaded, batch), clean)
    with loaded.edit(PROMPT, "Lyon", language="fr"):
        assert torch.equal(logits(loaded, batch), edited)


def test_load_takes_dtype_device_map_subfolder_and_relative_base_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokenizer = build_wordpiece_tokenizer()
    saved_base(Path("base"), tiny_bert(tokenizer), tokenizer)  # a relative base-model path
    editor = LimeEditor.from_base_model(
        BertForMaskedLM.from_pretrained("base").eval(), LimeConfig(languages=LANGS), tokenizer
    )
    editor.save_pretrained(tmp_path / "repo" / "editors" / "v1", base_model_name_or_path="base")
    stored = json.loads((tmp_path / "repo" / "editors" / "v1" / "adapter_config.json").read_text())
    assert stored["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    monkeypatch.chdir(tmp_path / "repo")  # another working directory
    loaded = LimeEditor.from_pretrained(tmp_path / "repo", subfolder="editors/v1", dtype=torch.bfloat16)
    assert next(loaded.model.get_base_model().parameters()).dtype == torch.bfloat16
    alias = LimeEditor.from_pretrained("editors/v1", torch_dtype="bfloat16", device_map="cpu")
    assert next(alias.model.get_base_model().parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not both"):
        LimeEditor.from_pretrained("editors/v1", dtype=torch.float32, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no subfolder 'v2'"):
        LimeEditor.from_pretrained("editors", subfolder="v2")
    with pytest.raises(ValueError, match="relative path inside the repo"):
        LimeEditor.from_pretrained("editors", subfolder="../v1")


def test_load_with_explicit_base_model_and_tokenizer(tmp_path):
    editor = mlm_editor(tmp_path, **FT)
    folder = editor.save_pretrained(tmp_path / "editor", save_tokenizer=False)
    assert not (folder / "tokenizer.json").exists()
    base = BertForMaskedLM.from_pretrained(tmp_path / "base")
    loaded = LimeEditor.from_pretrained(folder, base_model=base, tokenizer=build_wordpiece_tokenizer(), device="cpu")
    assert loaded.model.get_base_model() is base
    from_base_folder = LimeEditor.from_pretrained(folder)  # tokenizer from the base model's folder
    assert from_base_folder.tokenizer.get_vocab() == editor.tokenizer.get_vocab()
    with pytest.raises(TypeError, match="plain transformers model"):
        LimeEditor.from_pretrained(folder, base_model=loaded.model)


def test_load_an_adapter_saved_by_plain_peft(tmp_path):
    """No lime_editor.json: the task comes from the base model config's `architectures`, nothing is fingerprinted."""
    editor = mlm_editor(tmp_path, edit_lr_init=1.0, mend_init="random")
    perturb(editor)
    editor.model.save_pretrained(tmp_path / "plain")
    editor.tokenizer.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "lime_editor.json").exists()
    loaded = LimeEditor.from_pretrained(tmp_path / "plain")
    assert loaded.task == "masked_lm" and loaded.training_info is None
    batch = text_batch(editor.tokenizer)
    for model in (editor, loaded):
        with model.edit(PROMPT, "Lyon", language="en"):
            outputs = logits(model, batch)
    assert not torch.equal(outputs, logits(editor, batch))  # the edit changes the outputs ...
    with editor.edit(PROMPT, "Lyon", language="en"):
        assert torch.equal(outputs, logits(editor, batch))  # ... identically for the reloaded editor


def test_save_needs_the_base_model_name(tmp_path):
    editor = LimeEditor(get_peft_model(build_model("bert-mlm"), LimeConfig(languages=LANGS)), task="masked_lm")
    assert not editor.config.base_model_name_or_path  # a model built from a config has no name
    with pytest.raises(ValueError, match="base_model_name_or_path="):
        editor.save_pretrained(tmp_path / "editor")
    assert not (tmp_path / "editor").exists()
    editor.save_pretrained(tmp_path / "editor", base_model_name_or_path="org/tiny-bert")
    config = json.loads((tmp_path / "editor" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-bert"


def test_non_default_adapter_name_is_saved_flat(tmp_path):
    editor = mlm_editor(tmp_path)
    model = get_peft_model(BertForMaskedLM.from_pretrained(tmp_path / "base"), LimeConfig(languages=LANGS), "xl")
    folder = LimeEditor(model, editor.tokenizer).save_pretrained(tmp_path / "editor")
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "xl").exists()
    assert LimeEditor.from_pretrained(folder).languages == LANGS


def test_soft_differences_of_the_base_model_warn(tmp_path):
    editor = mlm_editor(tmp_path)
    folder = editor.save_pretrained(tmp_path / "editor")
    other = tiny_bert(editor.tokenizer, seed=1)  # same architecture, other weights
    with pytest.warns(UserWarning, match="weights of the edited layers differ"):
        LimeEditor.from_pretrained(folder, base_model=other)


# ----------------------------------------------------------------------------------------------- model card
def test_model_card_front_matter_and_body(tmp_path):
    editor = mlm_editor(tmp_path)
    editor.training_info = {"dataset": "mLAMA (en, fr, de)", "steps": 500}
    editor.metrics = {"edit_success": 0.91, "locality": 0.88}
    card = (editor.save_pretrained(tmp_path / "editor", repo_id="org/mbert-lime") / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: hf_lime" in front
    assert all(f"- {tag}" in front for tag in ("hf_lime", "lime", "model-editing", "cross-lingual", "peft"))
    assert "language:\n- en\n- fr\n- de" in front
    assert "base_model:" not in front  # a local folder is not a valid Hub `base_model`
    assert "**LiME language masks:** on" in body and "MEND" in body
    assert "**dataset:** mLAMA (en, fr, de)" in body and "**steps:** 500" in body
    assert "| edit_success | 0.91 |" in body
    assert 'LimeEditor.from_pretrained("org/mbert-lime")' in body


def test_model_card_names_a_hub_base_model_and_renders_per_language_tables():
    card = render_model_card(
        base_model="google-bert/bert-base-multilingual-cased", task="seq_cls", editor="ke", languages=["en", "zh"],
        use_lime_mask=False, metrics={"en": {"es": 0.5, "loc": 1.0}, "zh": {"es": 0.25}},
    )  # fmt: skip
    assert "base_model: google-bert/bert-base-multilingual-cased" in card
    assert "**LiME language masks:** off" in card and "KnowledgeEditor" in card
    assert "| | es | loc |" in card and "| zh | 0.25 |  |" in card
    assert "Training details were not recorded" in card


def test_model_card_metadata_pipeline_tag_license_and_model_index(tmp_path):
    from huggingface_hub import ModelCard

    editor = mlm_editor(tmp_path)
    editor.training_info = {"dataset": "mLAMA"}
    editor.metrics = {"reliability": 0.9, "transfer": 0.3, "locality": 0.8, "es_matrix": {"en": {"en": 0.9}}}
    folder = editor.save_pretrained(tmp_path / "editor", repo_id="org/mbert-lime", license="apache-2.0")
    data = ModelCard.load(folder / "README.md").data
    assert data.pipeline_tag == "fill-mask" and data.license == "apache-2.0" and data.library_name == "hf_lime"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"reliability", "transfer", "locality"}
    assert results["transfer"].metric_value == 0.3 and results["transfer"].dataset_name == "mLAMA"
    assert data.model_name == "mbert-lime"


def test_model_card_without_metrics_has_no_model_index():
    card = render_model_card(
        base_model="gpt2", task="causal_lm", editor="ft", languages=[], use_lime_mask=False, metrics=None
    )
    assert "pipeline_tag: text-generation" in card and "model-index" not in card and "license" not in card


@pytest.mark.parametrize("task", ["masked_lm", "seq_cls", "causal_lm"])
def test_score_is_minus_the_edit_loss_and_rises_with_the_edit(tmp_path, task):
    if task == "masked_lm":
        editor, text, target = mlm_editor(tmp_path), "Dante was born in [Y] .", "Florence"
    elif task == "seq_cls":
        tokenizer = build_wordpiece_tokenizer()
        editor = LimeEditor.from_base_model(tiny_classifier(tokenizer), LimeConfig(**FT), tokenizer)
        text, target = ("a man sleeps .", "a dog runs ."), 1
    else:
        tokenizer = build_byte_bpe_tokenizer()
        editor = LimeEditor.from_base_model(tiny_gpt2(tokenizer), LimeConfig(**FT), tokenizer)
        text, target = "Dante was born in", "Lyon"
    batch = pad_batch(editor.tokenizer, [editor._encode(text, target, 128)])
    with torch.no_grad():
        loss = float(editor.model(**batch).loss)
    before = editor.score(text, target)
    assert before == pytest.approx(-loss, abs=1e-5) and before < 0
    with editor.edit(text, target, **({"language": "en"} if editor.languages else {})):
        assert editor.score(text, target) > before
    assert editor.score(text, target) == pytest.approx(before, abs=1e-6)
