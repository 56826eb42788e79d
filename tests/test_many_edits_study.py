"""Smoke test of benchmarks/many_edits.py (issue 29, item 3) on a tiny synthetic fact world of two relations: the
facts it draws, and the whole study (a saved MEND editor and tuned FT, N = 1 and 4, one language and a mix, batch and
sequential) from the command line to the appended rows and the figure. No quality is asserted: a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
from conftest import REPO_ROOT
from helpers_facts import pretrained_fact_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast

from hf_lime import LimeConfig, LimeEditor

LANGUAGES = ["en", "fr", "de"]
TEMPLATES = {
    "P19": {"en": "[X] was born in [Y] .", "fr": "[X] est né à [Y] .", "de": "[X] ist in [Y] geboren ."},
    "P20": {"en": "[X] died in [Y] .", "fr": "[X] est mort à [Y] .", "de": "[X] ist in [Y] gestorben ."},
}
N_SUBJECTS, N_CITIES = 20, 6
CITY = {"en": "city{}", "fr": "ville{}", "de": "stadt{}"}  # each language's own names


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("many_edits", REPO_ROOT / "benchmarks" / "many_edits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def fact_items() -> list[dict]:
    """Every subject was born in one city and died in another; each language names the cities its own way."""
    items = []
    for relation, offset in (("P19", 0), ("P20", 1)):
        for s in range(N_SUBJECTS):
            city = (s + offset) % N_CITIES
            items.append({
                "id": f"{relation}:{s}", "source": "synthetic", "relation": relation, "group": f"subj{s}",
                "target_id": f"Q{city}", "languages": list(LANGUAGES),
                "prompts": [TEMPLATES[relation][lang].replace("[X]", f"subj{s}") for lang in LANGUAGES],
                "pairs": ["" for _ in LANGUAGES], "targets": [CITY[lang].format(city) for lang in LANGUAGES],
            })  # fmt: skip
    return items


def tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in TEMPLATES.values() for text in t.values() for w in text.split()} - {"[X]", "[Y]"})
    words += [f"subj{i}" for i in range(N_SUBJECTS)]
    words += [CITY[lang].format(i) for lang in LANGUAGES for i in range(N_CITIES)]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


def test_the_facts_are_drawn_once_by_subject(study):
    facts = study.plan_facts(fact_items(), fact_items(), LANGUAGES, None, n_locality=4, seed=0)
    assert facts.edit_relations == ["P19"] and facts.locality_relations == ["P20"]
    assert len(facts.same_relation) == 4 and len(facts.edits) == N_SUBJECTS - 4
    edited = {fact.item.group for fact in facts.edits}
    assert not edited & {item.group for item in facts.same_relation + facts.other}  # never about an edited subject
    assert {item.relation for item in facts.same_relation} == {"P19"} and len(facts.other) == 4
    for fact in facts.edits:
        gold = fact.item.gold_labels()
        assert all(fact.new_labels[lang] != gold[lang] for lang in LANGUAGES)
        assert {lang: label[:-1] for lang, label in fact.new_labels.items()} == {"en": "city", "fr": "ville",
                                                                                "de": "stadt"}  # fmt: skip
    again = study.plan_facts(fact_items(), fact_items(), LANGUAGES, None, n_locality=4, seed=0)
    assert [f.item.id for f in again.edits] == [f.item.id for f in facts.edits]  # the same pool every run
    assert study.edit_languages(4, "mix", LANGUAGES, "de") == ["en", "fr", "de", "en"]
    assert study.edit_languages(2, "one", LANGUAGES, "de") == ["de", "de"]
    assert study.unchanged_shares(["a", "b", "c", "x", "y", "z"], ["a", "b", "0", "x", "0", "0"], 3) == [2 / 3, 1 / 3]
    mean, (low, high) = study.bootstrap_mean([0.0, 1.0, 1.0, 1.0], 200, seed=0)
    assert mean == 0.75 and 0.0 <= low <= mean <= high <= 1.0
    assert math.isnan(study.bootstrap_mean([], 10, 0)[0])


def test_the_study_runs_end_to_end_on_a_tiny_model(study, tmp_path):
    tok, items = tokenizer(), fact_items()
    base = pretrained_fact_model(tok, items, steps=120)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()
    torch.manual_seed(0)
    editor = LimeEditor.from_base_model(loaded, LimeConfig(languages=LANGUAGES, mend_rank=8, edit_lr_init=1.0), tok,
                                        training_info={"n_edit": 1, "label_language": "own"})  # fmt: skip
    editor.save_pretrained(tmp_path / "editor", base_model_name_or_path=str(tmp_path / "base"))
    (tmp_path / "items.json").write_text(json.dumps(items))
    results, figure = tmp_path / "many_edits.json", tmp_path / "many_edits.png"
    results.write_text('[{"earlier": "row"}]')
    argv = ["--editors", f"mend={tmp_path / 'editor'}", "ft_tuned", "--dataset", "items", "--items",
            str(tmp_path / "items.json"), "--n", "1", "4", "--n_locality", "4", "--bootstrap", "50", "--device", "cpu",
            "--results", str(results), "--figure", str(figure)]  # fmt: skip
    with pytest.warns(UserWarning, match="trained to make 1 edit"):  # 4 edits in one batch: once, for mend
        rows = study.main(argv)
    assert len(rows) == 2 * 2 * 2 * 2  # editors x settings x modes x N
    saved = json.loads(results.read_text())
    assert saved[0] == {"earlier": "row"} and saved[1:] == json.loads(json.dumps(rows))
    for row in rows:
        for name in ("reliability", "transfer", "locality_same_relation", "locality_other", "locality", "held"):
            assert 0.0 <= row[name] <= 1.0, (name, row)
        assert len(row["reliability_ci"]) == 2 and row["n_locality_other"] == 4 and row["commit"]
    by_key = {(r["editor"], r["setting"], r["mode"], r["n"]): r for r in rows}
    assert set(by_key) == {(e, s, m, n) for e in ("mend", "ft_tuned") for s in ("one", "mix")
                           for m in ("batch", "sequential") for n in (1, 4)}  # fmt: skip
    assert by_key["mend", "one", "batch", 4]["trained_edit_batch_size"] == 1
    assert by_key["ft_tuned", "one", "batch", 4]["ft_settings"]["ft_lr"] == 5e-4
    for editor_name in ("mend", "ft_tuned"):  # one edit is the same edit in both modes
        one = [by_key[editor_name, "one", mode, 1] for mode in ("batch", "sequential")]
        assert [r["reliability"] for r in one] == [one[0]["reliability"]] * 2
        assert [r["locality"] for r in one] == [one[0]["locality"]] * 2
    assert figure.stat().st_size > 10_000


def test_a_strong_edit_reads_as_reliable_and_held(study, tmp_path):
    """The strict reading against edit_many's own: a fine-tuning edit strong enough to hold is reliable, and with
    every edit in one language reliability is the share of requests that held."""
    tok, items = tokenizer(), fact_items()
    base = pretrained_fact_model(tok, items, steps=60)
    strong = LimeConfig(languages=LANGUAGES, editor="ft", use_lime_mask=False, ft_optimizer="adam", ft_lr=0.02,
                        ft_steps=100, ft_early_stop=False)  # fmt: skip
    editor = LimeEditor.from_base_model(base, strong, tok)
    before = {k: v.clone() for k, v in editor.model.state_dict().items()}
    facts = study.plan_facts(items, items, LANGUAGES, None, n_locality=4, seed=0)
    args = study.parse_args(["--editors", "ft_tuned", "--n", "1", "3", "--settings", "one", "--bootstrap", "0",
                             "--results", str(tmp_path / "r.json"), "--figure", str(tmp_path / "f.png")])  # fmt: skip
    args.edit_language = "fr"
    rows = study.run_editor(study.EditorSpec("strong", None), editor, facts, args, LANGUAGES, "commit")
    assert [(row["mode"], row["n"]) for row in rows] == [("batch", 1), ("batch", 3), ("sequential", 1),
                                                         ("sequential", 3)]  # fmt: skip
    assert rows[0]["reliability"] == rows[0]["held"] == 1.0
    assert all(row["reliability"] == row["held"] and row["edit_language"] == "fr" for row in rows)
    assert all(torch.equal(before[k], v) for k, v in editor.model.state_dict().items())  # every edit reverted


@pytest.fixture(scope="module")
def multi_answer(study):
    spec = importlib.util.spec_from_file_location("multi_answer", REPO_ROOT / "benchmarks" / "multi_answer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


def test_answers_given_in_every_language_are_read_apart_from_transfer(multi_answer, tmp_path):
    """benchmarks/multi_answer.py end to end: a fine-tuning edit strong enough to hold makes every row it is given
    hold: the fact edited in every language at once holds in its editing language and far more in the others than the
    usual edit transfers (`given_answer`, never `transfer`), paired against it on the same facts."""
    tok, items = tokenizer(), fact_items()
    base = pretrained_fact_model(tok, items, steps=60)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    strong = LimeConfig(languages=LANGUAGES, editor="ft", use_lime_mask=False, ft_optimizer="adam", ft_lr=0.02,
                        ft_steps=100, ft_early_stop=False)  # fmt: skip
    editor = LimeEditor.from_base_model(base, strong, tok)
    editor.save_pretrained(tmp_path / "editor", base_model_name_or_path=str(tmp_path / "base"))
    (tmp_path / "items.json").write_text(json.dumps(items))
    out = tmp_path / "multi.json"
    report = multi_answer.main(["--editor", str(tmp_path / "editor"), "--dataset", "items", "--items",
                                str(tmp_path / "items.json"), "--n_facts", "3", "--edit_languages", "fr",
                                "--n_locality", "4", "--bootstrap", "50", "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == report and report["n_edits"] == 3
    editing, every_prompt = report["variants"]["editing"], report["variants"]["every_prompt"]
    assert set(editing) >= {"reliability", "transfer", "locality_same_relation"} and "given_answer" not in editing
    assert "transfer" not in every_prompt and every_prompt["reliability"] == 1.0
    assert every_prompt["given_answer"] > editing["transfer"] + 0.5
    difference = every_prompt["given_answer"] - editing["transfer"]  # paired over the same facts
    assert every_prompt["given_answer_minus_editing"] == pytest.approx(difference)
    assert 0.0 <= report["variants"]["every"]["given_answer"] <= 1.0
    assert "every_prompt_mean" not in report["variants"]  # combine="mean" is for MEND: skipped for fine-tuning
    assert len(every_prompt["given_answer_ci"]) == 2
    with pytest.raises(SystemExit):
        multi_answer.parse_args(["--variants", "every"])  # nothing to pair against
