"""The cross-lingual evaluation harness on the tiny synthetic fact world of `helpers_facts`.

The world's tiny masked LM is trained for 250 steps, enough to predict every fact (checked below), so an edit to
another object is a real change and its success can be measured against a known base behaviour.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
import torch
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model
from helpers_tokenizers import build_byte_bpe_tokenizer, build_wordpiece_tokenizer
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.data.encoding import encode_example, is_correct, pad_batch
from hf_lime.evaluation import RECORD_FIELDS, EvaluationResult, evaluate_editor, format_table, save_report
from hf_lime.metrics import METRIC_NAMES, compute_xl_edit_metrics, metric_path
from hf_lime.tuner.config import EDITORS

N_EDITS, N_RETAIN = 4, 3
LAST_FFN_OUT = {"target_modules": ["output.dense"], "layers_to_transform": [1]}


@pytest.fixture(scope="module")
def world():
    tokenizer, items = build_fact_tokenizer(), fact_items()
    base = pretrained_fact_model(tokenizer, items, steps=250)
    examples = [
        encode_example(tokenizer, "masked_lm", p, t)
        for it in items
        for p, t in zip(it["prompts"], it["targets"], strict=True)
    ]
    batch = pad_batch(tokenizer, examples)
    with torch.no_grad():
        logits = base(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert all(is_correct("masked_lm", logits, batch)), "the fact model should know every fact"
    return tokenizer, items, base


def make_model(base, step_size: float | None = None, **config):
    config = {"languages": LANGUAGES, "use_lime_mask": False, **LAST_FFN_OUT, **config}
    model = get_peft_model(copy.deepcopy(base), LimeConfig(**config))
    if step_size is not None:
        with torch.no_grad():
            model.base_model.edit_lrs.fill_(step_size)
    return model


def run(model, tokenizer, items, **kwargs):
    options = {"task": "masked_lm", "n_edits": N_EDITS, "n_retain": N_RETAIN, "progress": False} | kwargs
    return evaluate_editor(model, tokenizer, items, **options)


def same(a, b) -> bool:
    """Equality of metric dicts, with NaN equal to NaN (and to `null`, as the JSON files write it)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)):
        return True
    return a == b


def test_records_are_complete_and_give_the_metrics(world):
    tokenizer, items, base = world
    result = run(make_model(base, 0.1), tokenizer, items, return_records=True)
    records = result.records
    assert isinstance(result, EvaluationResult) and tuple(records) == RECORD_FIELDS
    assert same(result.metrics, compute_xl_edit_metrics(**records))
    # every edit's records carry the id of the item it was made from: one bootstrap group per fact
    assert all(edit_id.split(":", 1)[1] == group for edit_id, group in zip(records["edit_ids"], records["group_ids"],
                                                                           strict=True))  # fmt: skip
    assert len(set(records["group_ids"])) < len(set(records["edit_ids"]))  # the same items edited in every language
    assert tuple(result.metrics) == METRIC_NAMES
    for matrix in (result.metrics["es_matrix"], result.metrics["loc_matrix"]):
        cells = {(edit, scored) for edit in matrix for scored in matrix[edit]}
        assert cells == {(edit, scored) for edit in LANGUAGES for scored in LANGUAGES}
    edits_by_language = defaultdict(set)
    rows_by_edit = Counter(zip(records["edit_ids"], records["kinds"], strict=True))
    for edit_id, language in zip(records["edit_ids"], records["edit_languages"], strict=True):
        edits_by_language[language].add(edit_id)
    assert {lang: len(ids) for lang, ids in edits_by_language.items()} == {lang: N_EDITS for lang in LANGUAGES}
    assert result.settings["edits_per_language"] == {lang: N_EDITS for lang in LANGUAGES}
    for edit_id in set(records["edit_ids"]):
        assert rows_by_edit[(edit_id, "edit")] == len(LANGUAGES)
        assert rows_by_edit[(edit_id, "retain")] == N_RETAIN * len(LANGUAGES)
    # Paired design: every edit language edits the same items.
    items_by_language = {lang: {i.split(":", 1)[1] for i in ids} for lang, ids in edits_by_language.items()}
    assert len({frozenset(ids) for ids in items_by_language.values()}) == 1
    # Edit references are the new targets: never the item's own object.
    gold = {f"{item['id']}": item["target_id"] for item in items}
    for edit_id, kind, reference in zip(records["edit_ids"], records["kinds"], records["references"], strict=True):
        if kind == "edit":
            assert reference != gold[edit_id.split(":", 1)[1]] and reference.startswith("city")


def test_retain_items_are_other_groups_and_fixed_per_item(world):
    from hf_lime.data.items import parse_item
    from hf_lime.evaluation.harness import _Planner

    _, items, _ = world
    parsed = [parse_item(row, set(LANGUAGES)) for row in items]
    planner = _Planner(parsed, LANGUAGES, "alternative", seed=0)
    for item in parsed[:6]:
        retain = planner.retain_items(item, 5)
        assert len({r.id for r in retain}) == 5 and all(r.group != item.group for r in retain)
        assert [r.id for r in planner.retain_items(item, 5)] == [r.id for r in retain]


def test_base_model_is_bit_identical_afterwards(world):
    tokenizer, items, base = world
    model = make_model(base, 0.1)
    batch = pad_batch(tokenizer, [encode_example(tokenizer, "masked_lm", "subj3 ist in [Y] geboren .", "city3")])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        before = model(**inputs).logits
    result = run(model, tokenizer, items)
    assert result.metrics["reliability"] > 0  # the edits did change the model while they were applied
    assert model.base_model.applied_edit_ids == []
    after_state = model.state_dict()
    assert state.keys() == after_state.keys()
    assert all(torch.equal(state[name], after_state[name]) for name in state)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_step_size_controls_edit_success_and_locality(world):
    tokenizer, items, base = world
    frozen = run(make_model(base, 0.0), tokenizer, items).metrics
    assert frozen["locality"] == 1.0 and frozen["edit_success"] == 0.0  # the base model knows every gold object
    tiny = run(make_model(base, 1e-6), tokenizer, items).metrics
    assert tiny["reliability"] == 0.0 and tiny["locality"] == 1.0
    good = run(make_model(base, 0.1), tokenizer, items).metrics
    assert good["reliability"] >= 0.5 and good["transfer"] > 0.0
    assert good["locality"] < 1.0  # an un-trained edit is not local: the metric sees it
    # A huge step overshoots (the normalised factors pass through the model's LayerNorms): edit success falls again.
    huge = run(make_model(base, 10.0), tokenizer, items).metrics
    assert huge["reliability"] < good["reliability"]


@pytest.mark.skipif("ft" not in EDITORS, reason="the fine-tuning editor is not available")
def test_fine_tuning_editor_without_languages(world):
    tokenizer, items, base = world
    model = make_model(base, languages=[], editor="ft", ft_steps=50, ft_optimizer="adam", ft_lr=3e-2)
    with pytest.raises(ValueError, match="no `languages`"):
        run(model, tokenizer, items)
    result = run(model, tokenizer, items, languages=LANGUAGES)
    assert result.metrics["reliability"] >= 0.9  # fine-tuning runs until the edit prompt predicts the target
    assert result.settings["editor"] == "ft"


def test_distinct_facts_gives_each_edit_language_its_own_items(world):
    tokenizer, items, base = world
    model = make_model(base, 0.1)
    shared = run(model, tokenizer, items, return_records=True)
    distinct = run(model, tokenizer, items, return_records=True, distinct_facts=True)
    facts_by_language: dict[str, set[str]] = {}
    for edit_id, language in zip(distinct.records["edit_ids"], distinct.records["edit_languages"], strict=True):
        facts_by_language.setdefault(language, set()).add(edit_id.split(":", 1)[1])
    assert all(len(facts) == N_EDITS for facts in facts_by_language.values())
    assert len(set().union(*facts_by_language.values())) == N_EDITS * len(LANGUAGES)  # no fact edited twice
    assert distinct.settings["n_facts"] == N_EDITS * len(LANGUAGES) and shared.settings["n_facts"] == N_EDITS
    again = run(model, tokenizer, items, return_records=True, distinct_facts=True)
    assert again.records == distinct.records  # the same edits for every run of a seed: runs pair


def test_same_seed_same_records_other_seed_other_items(world):
    tokenizer, items, base = world
    model = make_model(base, 0.1)
    first = run(model, tokenizer, items, return_records=True, edit_languages=["fr"])
    second = run(model, tokenizer, items, return_records=True, edit_languages=["fr"])
    other = run(model, tokenizer, items, return_records=True, edit_languages=["fr"], seed=1)
    assert first.records == second.records and same(first.metrics, second.metrics)
    assert set(first.records["edit_ids"]) != set(other.records["edit_ids"])
    assert set(first.metrics["es_matrix"]) == {"fr"}


MULTI_TOKEN_CITIES = ["Paris", "Florence", "Rome", "Berlin", "Madrid", "Lyon"]
MULTI_TOKEN_TEMPLATES = {"en": "[X] was born in [Y] .", "fr": "[X] est né à [Y] .", "de": "[X] ist in [Y] geboren ."}


def multi_token_items() -> list[dict]:
    subjects = ["Dante", "Goethe", "Picasso", "France", "Italy", "Germany", "Spain"]
    return [
        {
            "id": f"P19:{subject}", "source": "mlama", "relation": "P19", "group": subject,
            "target_id": city, "languages": list(MULTI_TOKEN_TEMPLATES),
            "prompts": [template.replace("[X]", subject) for template in MULTI_TOKEN_TEMPLATES.values()],
            "pairs": [""] * 3, "targets": [city] * 3,
        }
        for subject, city in zip(subjects, MULTI_TOKEN_CITIES + MULTI_TOKEN_CITIES, strict=False)
    ]  # fmt: skip


@pytest.mark.parametrize("family", ["bert-mlm", "gpt2"])
def test_multi_token_targets_are_scored_token_by_token(family):
    from conftest import build_model

    tokenizer = build_wordpiece_tokenizer() if family == "bert-mlm" else build_byte_bpe_tokenizer()
    task = "masked_lm" if family == "bert-mlm" else "causal_lm"
    model = get_peft_model(build_model(family), LimeConfig(languages=["en", "fr", "de"], use_lime_mask=False))
    model.base_model.model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(0.0)
    result = evaluate_editor(
        model, tokenizer, multi_token_items(), task, n_edits=3, n_retain=2, progress=False, return_records=True
    )
    records = result.records
    assert result.metrics["locality"] == 1.0  # a zero step changes nothing
    lengths = Counter()
    for prediction, reference in zip(records["predictions"], records["references"], strict=True):
        assert len(prediction.split(" ")) == len(reference.split(" "))
        lengths[len(reference.split(" "))] += 1
    assert lengths[2] > 0 and lengths[1] > 0  # "Florence" / "Rome" are two tokens, the other cities one


def nli_items() -> list[dict]:
    premises = {"en": "a man sleeps .", "fr": "Le chat dort .", "de": "Der Hund läuft ."}
    hypotheses = ["a woman runs .", "the dog sleeps .", "a cat runs .", "the man is in Paris ."]
    labels = ["entailment", "neutral", "contradiction"]
    return [
        {
            "id": f"xnli:{i}", "source": "xnli", "relation": "xnli", "group": str(i), "target_id": str(i % 3),
            "languages": list(premises), "prompts": [f"{premises[lang]} {i}" for lang in premises],
            "pairs": [hypotheses[i % 4]] * 3, "targets": [labels[i % 3]] * 3,
        }
        for i in range(12)
    ]  # fmt: skip


def test_gold_mode_edits_only_mistakes_to_their_gold_class():
    from conftest import build_model

    tokenizer = build_wordpiece_tokenizer()
    base = build_model("bert-cls")
    base.resize_token_embeddings(len(tokenizer))
    base.config.label2id = {"entailment": 0, "neutral": 1, "contradiction": 2}
    model = get_peft_model(base, LimeConfig(languages=["en", "fr", "de"], use_lime_mask=False))
    items = nli_items()
    with pytest.warns(UserWarning, match="gets only"):
        result = evaluate_editor(
            model, tokenizer, items, "seq_cls", n_edits=12, n_retain=2, new_target="gold", progress=False,
            return_records=True,
        )  # fmt: skip
    records = result.records
    gold = {item["id"]: item["target_id"] for item in items}
    by_id = {item["id"]: item for item in items}
    edited = sorted(set(records["edit_ids"]))
    assert edited and all(0 < n < 12 for n in result.settings["edits_per_language"].values())
    for edit_id in edited:
        language, item_id = edit_id.split(":", 1)
        item = by_id[item_id]
        position = item["languages"].index(language)
        encoded = encode_example(tokenizer, "seq_cls", item["prompts"][position], item["targets"][position],
                                 pair=item["pairs"][position], label2id=base.config.label2id)  # fmt: skip
        batch = pad_batch(tokenizer, [encoded])
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert str(int(logits.argmax(-1))) != gold[item_id]  # the unedited model got it wrong in l_e
    for edit_id, kind, reference in zip(records["edit_ids"], records["kinds"], records["references"], strict=True):
        if kind == "edit":
            assert reference == gold[edit_id.split(":", 1)[1]]


def test_format_table(world):
    tokenizer, items, base = world
    result = run(make_model(base, 0.1), tokenizer, items, edit_languages=["fr", "en"], bootstrap=50)
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].split() == ["eval", "ES", "fr", "ES", "en", "ES", "mean", "Loc", "fr", "Loc", "en", "Loc", "mean"]
    assert [line.split()[0] for line in lines[2:5]] == ["en", "fr", "de"]
    fr_row = lines[3].split()
    assert fr_row[1] == f"{result.metrics['es_matrix']['fr']['fr']:.3f}"
    assert fr_row[4] == f"{result.metrics['loc_matrix']['fr']['fr']:.3f}"
    summary = {line.split()[0]: line for line in lines if line.split()[0] in ("reliability", "hmean", "language_gap")}
    low, high = result.metrics["ci"]["reliability"]
    assert summary["reliability"].split()[1:] == [
        f"{result.metrics['reliability']:.3f}",
        f"[{low:.3f},",
        f"{high:.3f}]",
    ]
    assert "language_gap" in summary
    bare = compute_xl_edit_metrics(["a"], ["a"], ["1"], ["en"], ["fr"], ["edit"])
    bare_table = format_table(bare)
    assert "n/a" in bare_table  # no retain records: locality is undefined
    with pytest.raises(ValueError, match="compute_xl_edit_metrics"):
        format_table({"hmean": 1.0})


def test_save_report(world, tmp_path):
    tokenizer, items, base = world
    result = run(make_model(base, 0.1), tokenizer, items, return_records=True)
    written = save_report(result, tmp_path / "report")
    assert set(written) == {"metrics", "table", "settings", "records", "es_heatmap", "loc_heatmap", "by_language"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in written.values())
    for name in ("es_heatmap", "loc_heatmap", "by_language"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert same(json.loads(written["metrics"].read_text()), result.metrics)
    assert json.loads(written["records"].read_text()) == result.records
    assert written["table"].read_text().strip() == format_table(result)
    no_retain = run(make_model(base, 0.1), tokenizer, items, n_retain=0)
    written = save_report(no_retain.metrics, tmp_path / "bare")
    assert json.loads(written["metrics"].read_text())["locality"] is None  # NaN is written as null
    assert "loc_heatmap" not in written and "settings" not in written


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"edit_languages": ["xx"]}, ValueError, "xx"),
        ({"languages": ["en", "fr", "de", "es"]}, ValueError, r"unknown to this editor"),
        ({"languages": ["en", "fr", "de", "es"], "edit_languages": ["en"]}, ValueError, "Only 0 items"),
        ({"n_edits": 0}, ValueError, "n_edits"),
        ({"n_edits": 25}, ValueError, "Only 24 items"),
        ({"n_retain": -1}, ValueError, "n_retain"),
        ({"n_neighbours": -1}, ValueError, "n_neighbours"),
        ({"extra_scorings": ("ranked",)}, ValueError, "Unknown scoring 'ranked'"),
        ({"task": "translation"}, ValueError, "Unknown task"),
        ({"new_target": "random"}, ValueError, "new_target"),
        ({"items": []}, ValueError, "empty"),
        ({"languages": "en"}, TypeError, "string"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"locality": "whole"}, ValueError, "Unknown locality"),
        ({"locality": "sequence", "task": "causal_lm"}, ValueError, "locality='sequence'"),
    ],
)
def test_bad_inputs(world, kwargs, error, match):
    tokenizer, items, base = world
    kwargs = {"items": items} | kwargs
    with pytest.raises(error, match=match):
        run(make_model(base, 0.1), tokenizer, **kwargs)


def test_items_lacking_a_language_are_not_edited(world):
    tokenizer, items, base = world
    cut = [dict(item) for item in items]
    for item in cut[:20]:  # only 4 items keep German
        item["languages"], item["prompts"] = item["languages"][:2], item["prompts"][:2]
        item["pairs"], item["targets"] = item["pairs"][:2], item["targets"][:2]
    with pytest.raises(ValueError, match=r"Only 4 items can be edited in 'en'"):
        run(make_model(base, 0.1), tokenizer, cut, n_edits=5)
    result = run(make_model(base, 0.1), tokenizer, cut, n_edits=4, n_retain=2, return_records=True)
    assert {edit_id.split(":", 1)[1] for edit_id in result.records["edit_ids"]} == {f"P19:{s}" for s in range(20, 24)}


EVALUATE_SCRIPT = """
import json, os, sys
import evaluate
records = json.load(open(sys.argv[1]))
module = evaluate.load(sys.argv[2])
print(json.dumps(module.compute(**records, bootstrap=20, seed=3)))
"""


@pytest.mark.slow
def test_records_through_the_evaluate_module_give_the_same_metrics(world, tmp_path):
    tokenizer, items, base = world
    result = run(make_model(base, 0.1), tokenizer, items, return_records=True, bootstrap=20, seed=3)
    path = tmp_path / "records.json"
    path.write_text(json.dumps(result.records))
    env = dict(os.environ, HF_EVALUATE_OFFLINE="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, "-c", EVALUATE_SCRIPT, str(path), metric_path()],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert same(json.loads(completed.stdout.strip().splitlines()[-1]), result.metrics)


@pytest.mark.parametrize("family", ["bert-mlm", "xlmr-mlm", "gpt2", "llama"])
def test_logits_only_at_target_positions_give_the_same_predictions(family):
    from conftest import FAMILIES, build_model, make_batch

    from hf_lime.data.encoding import predict_from_logits
    from hf_lime.evaluation.scoring import TargetScorer

    task = FAMILIES[family].task
    model = get_peft_model(build_model(family), LimeConfig(languages=["en"], use_lime_mask=False))
    batch = make_batch(task, batch_size=4, seq_len=10, seed=1)
    batch["labels"][1, 5] = 9  # rows with different numbers of target positions
    batch["attention_mask"][2, -1:] = 0
    scorer = TargetScorer(model, None, task, None, max_length=32, batch_size=8)
    shapes = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    sliced = scorer._predict_batch(batch)
    handle.remove()
    assert shapes == [(int((batch["labels"] != -100).sum()), head.in_features)]  # fed the target rows only
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    full = predict_from_logits(task, logits, batch)
    assert sliced == full and [len(row) for row in full] == [int((row != -100).sum()) for row in batch["labels"]]


@pytest.mark.integration
def test_real_mlama_items_with_the_mbert_vocabulary(shared_data):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from hf_lime.data import load_mlama

    languages = ["en", "zh", "ru"]
    items = load_mlama(shared_data, languages, relations=["P36", "P37"], max_per_relation=100)["test"]
    folder = shared_data / "tokenizers" / "bert-base-multilingual-cased"
    tokenizer = BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, attn_implementation="eager")  # fmt: skip
    model = get_peft_model(BertForMaskedLM(config).eval(), LimeConfig(languages=languages))
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(0.0)
    result = evaluate_editor(model, tokenizer, items, "masked_lm", n_edits=3, n_retain=2, progress=False,
                             return_records=True)  # fmt: skip
    assert result.metrics["locality"] == 1.0 and result.metrics["n_edits"] == 9
    references = result.records["references"]
    assert max(len(reference.split(" ")) for reference in references) > 1  # multi-token objects (e.g. in zh, ru)
    for prediction, reference in zip(result.records["predictions"], references, strict=True):
        assert len(prediction.split(" ")) == len(reference.split(" "))


def test_locality_inputs_reach_the_editor_at_edit_time(world, monkeypatch):
    """`locality_items`/`n_locality`: each edit gets `n_locality` unrelated prompts in its language as
    `retain_inputs` (fine-tuning with a locality term uses them; no "no retain_inputs" warning)."""
    import warnings

    tokenizer, items, base = world
    model = make_model(base, languages=[], editor="ft", ft_steps=20, ft_optimizer="adam", ft_lr=3e-2, ft_loc_coef=1.0)
    seen = []
    edit = model.base_model.edit

    def spy(inputs, language=None, retain_inputs=None):
        seen.append((language, None if retain_inputs is None else retain_inputs["input_ids"].shape[0]))
        return edit(inputs, language, retain_inputs)

    monkeypatch.setattr(model, "edit", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "ft_loc_coef > 0 but the edit has no `retain_inputs`" would fail here
        result = run(model, tokenizer, items, languages=LANGUAGES, locality_items=items, n_locality=3)
    assert seen and all(n == 3 for _, n in seen) and result.settings["n_locality"] == 3
    with pytest.raises(ValueError, match="needs `locality_items`"):
        run(model, tokenizer, items, languages=LANGUAGES, n_locality=2)


def test_sequence_locality_reads_every_position_of_a_masked_span(world):
    """`locality="sequence"` (the LiME reference's protocol): retain prompts with a span of masks of seeded random
    length, read at every position; no edit keeps everything, a stricter reading than at the target only."""
    from hf_lime.data.items import parse_item
    from hf_lime.evaluation.scoring import SequenceScorer

    tokenizer, items, base = world
    model = make_model(base, 0.1)
    result = run(model, tokenizer, items, locality="sequence", return_records=True)
    target = run(make_model(base, 0.1), tokenizer, items, return_records=True)
    assert result.settings["locality"] == "sequence" and target.settings["locality"] == "target"
    records = result.records
    # the edit records are read as before; only the retain records change
    for name in ("predictions", "references"):
        edits = [v for v, k in zip(records[name], records["kinds"], strict=True) if k == "edit"]
        assert edits == [v for v, k in zip(target.records[name], target.records["kinds"], strict=True) if k == "edit"]
    retain = [(p, r) for p, r, k in zip(records["predictions"], records["references"], records["kinds"], strict=True)
              if k == "sequence"]  # fmt: skip
    assert "retain" not in records["kinds"]  # read over the sequence only
    assert len(retain) == len([k for k in target.records["kinds"] if k == "retain"])
    parsed = [parse_item(row, set(LANGUAGES)) for row in items]
    scorer = SequenceScorer(model, tokenizer, parsed, seed=0, max_length=32, batch_size=4)
    item = parsed[0]
    assert all(scorer.span_length(item, language) in scorer.lengths[language] for language in LANGUAGES)
    encoded = scorer.encode(item, "en")
    assert encoded["input_ids"].count(tokenizer.mask_token_id) == scorer.span_length(item, "en")
    # a reference is the unedited argmax at every non-padding position, special tokens included
    (answer,) = scorer.predict([(item, "en")])
    assert len(answer.split()) == sum(encoded["attention_mask"])
    # the unedited model keeps every sequence; an edit that moves anything is caught
    frozen = run(make_model(base, 0.0), tokenizer, items, locality="sequence").metrics
    assert frozen["locality_sequence"] == 1.0
    assert result.metrics["locality_sequence"] <= target.metrics["locality_other"]
    assert result.metrics["locality_sequence"] < 1.0
    assert math.isnan(result.metrics["locality"])  # no probe read at its target


def test_sequence_span_lengths_follow_the_objects_of_each_language(world):
    from hf_lime.data.items import parse_item
    from hf_lime.evaluation.scoring import SequenceScorer

    tokenizer, items, base = world
    parsed = [parse_item(row, set(LANGUAGES)) for row in items]
    scorer = SequenceScorer(base, tokenizer, parsed, seed=3, max_length=32, batch_size=4)
    for language in LANGUAGES:
        objects = [len(tokenizer(" " + it.gold_labels()[language], add_special_tokens=False)["input_ids"])
                   for it in parsed if language in it.gold_labels()]  # fmt: skip
        assert sorted(scorer.lengths[language]) == sorted(objects)
    again = SequenceScorer(base, tokenizer, parsed, seed=3, max_length=32, batch_size=4)
    assert [scorer.span_length(it, "fr") for it in parsed] == [again.span_length(it, "fr") for it in parsed]
    with pytest.raises(ValueError, match="mask token"):
        SequenceScorer(base, type("NoMask", (), {"mask_token": None})(), parsed, seed=0, max_length=8, batch_size=1)


def test_edit_options_reach_every_edit_and_are_recorded(world):
    """`edit_options` go to every `model.edit` call (here a MEND edit fitted against key moments) and into
    `settings["edit_options"]` (tensor dicts as their layer count)."""
    from hf_lime.tuner.preserve import key_moments

    tokenizer, items, base = world
    model = make_model(base, step_size=1e-2)
    moments = key_moments(model.base_model, [tokenizer(["a b c"], return_tensors="pt")])
    calls = []
    real = model.base_model.edit

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    model.base_model.edit = recording
    result = run(model, tokenizer, items, edit_options={"combine": "solve", "preserve": moments})
    assert len(calls) == result.metrics["n_edits"] and result.metrics["n_edits"] > 0
    assert all(call["combine"] == "solve" and call["preserve"] is moments for call in calls)
    assert result.settings["edit_options"] == {"combine": "solve", "preserve": f"{len(moments)} layers"}
