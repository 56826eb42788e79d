"""The harness's readings: locality in parts (neighbours, other facts, whole sequence), extra scorings, candidates
among every object of a relation, excluded items, and the `"editing"` names protocol.

The tiny fact world of `helpers_facts` has one relation; here its items are split into two relations (`P19`: subjects
0-11, `P36`: subjects 12-23) so that "same relation" and "other fact" differ.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.data import check_label_language, load_cldr_facts
from hf_lime.data.names import names_language
from hf_lime.evaluation import candidate_table, evaluate_editing_protocol, evaluate_editor

LAST_FFN_OUT = {"target_modules": ["output.dense"], "layers_to_transform": [1]}


def two_relations(items: list[dict]) -> list[dict]:
    return [{**item, "relation": "P19" if int(item["group"][4:]) < 12 else "P36"} for item in items]


@pytest.fixture(scope="module")
def world():
    tokenizer, items = build_fact_tokenizer(), fact_items()
    return tokenizer, two_relations(items), pretrained_fact_model(tokenizer, items, steps=250)


def make_model(base, step_size: float = 0.1):
    model = get_peft_model(copy.deepcopy(base), LimeConfig(languages=LANGUAGES, use_lime_mask=False, **LAST_FFN_OUT))
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(step_size)
    return model


def run(model, tokenizer, items, **kwargs):
    options = {"task": "masked_lm", "n_edits": 3, "n_retain": 2, "n_neighbours": 4, "progress": False}
    return evaluate_editor(model, tokenizer, items, **(options | kwargs))


def by_edit(records: dict, kind: str) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for index, (edit_id, record_kind) in enumerate(zip(records["edit_ids"], records["kinds"], strict=True)):
        if record_kind == kind:
            rows.setdefault(edit_id, []).append(index)
    return rows


def test_neighbours_are_the_edited_relation_and_retain_items_are_other_relations(world):
    tokenizer, items, base = world
    result = run(make_model(base), tokenizer, items, return_records=True)
    records = result.records
    neighbours, retain = by_edit(records, "neighbour"), by_edit(records, "retain")
    assert (
        set(neighbours)
        == set(retain)
        == {edit_id for edit_id, kind in zip(records["edit_ids"], records["kinds"], strict=True) if kind == "edit"}
    )
    assert result.settings["n_neighbours"] == 4 and result.settings["neighbours_per_edit"] == 4.0
    for edit_id, rows in neighbours.items():
        assert len(rows) == 4 * len(LANGUAGES)
        assert len(retain[edit_id]) == 2 * len(LANGUAGES)
    # every edit is scored in every language; which probe is which is in the planner: same relation, other subject
    from hf_lime.data.items import parse_item
    from hf_lime.evaluation.harness import _Planner

    parsed = [parse_item(item, set(LANGUAGES)) for item in items]
    planner = _Planner(parsed, LANGUAGES, "alternative", seed=0)
    for item in parsed[:6]:
        for neighbour in planner.neighbour_items(item, 4):
            assert neighbour.relation == item.relation and neighbour.group != item.group
        for other in planner.retain_items(item, 2):
            assert other.relation != item.relation
        assert planner.neighbour_items(item, 4) == planner.neighbour_items(item, 4)  # fixed per item
    assert len(planner.neighbour_items(parsed[0], 50)) == 11  # the relation's other 11 subjects, no more


def test_locality_parts_reach_the_metrics(world):
    tokenizer, items, base = world
    unchanged = run(make_model(base, 0.0), tokenizer, items, locality="both").metrics
    for name in ("locality", "locality_same_relation", "locality_other", "locality_sequence"):
        assert unchanged[name] == 1.0, name  # an editor that changes nothing keeps every probe
    edited = run(make_model(base, 1.0), tokenizer, items, locality="both").metrics
    assert edited["locality_same_relation"] < 1.0
    assert edited["hmean_same_relation"] == pytest.approx(
        2
        * edited["edit_success"]
        * edited["locality_same_relation"]
        / (edited["edit_success"] + edited["locality_same_relation"])
    )
    none = run(make_model(base), tokenizer, items, n_neighbours=0).metrics
    assert math.isnan(none["locality_same_relation"]) and none["locality"] == none["locality_other"]


def test_extra_scorings_read_the_same_edits(world):
    tokenizer, items, base = world
    result = run(make_model(base), tokenizer, items, extra_scorings=("candidates",), return_records=True)
    assert set(result.readings) == {"candidates"}
    ranked = result.readings["candidates"]
    assert ranked.settings["scoring"] == "candidates" and result.settings["scoring"] == "open"
    edit_ids = [e for e, k in zip(result.records["edit_ids"], result.records["kinds"], strict=True) if k == "edit"]
    assert ranked.records["edit_ids"] == edit_ids and set(ranked.records["kinds"]) == {"edit"}
    # the same edits read by ranking alone give the same edit success as a separate candidates run
    alone = run(make_model(base), tokenizer, items, scoring="candidates")
    assert ranked.metrics["edit_success"] == pytest.approx(alone.metrics["edit_success"])
    assert math.isnan(ranked.metrics["locality"])
    assert "pre_edit_floor" in ranked.settings


def test_candidates_add_objects_to_rank(world):
    tokenizer, items, base = world
    table = candidate_table(items)
    assert table[("P19", "en")] == sorted({item["targets"][0] for item in items if item["relation"] == "P19"})
    from hf_lime.data.items import parse_item
    from hf_lime.evaluation.scoring import RankingScorer

    parsed = [parse_item(item, set(LANGUAGES)) for item in items[:2]]
    model = make_model(base)
    few = RankingScorer(model, tokenizer, "masked_lm", None, 32, 8, parsed)
    every = RankingScorer(model, tokenizer, "masked_lm", None, 32, 8, parsed, candidates=table)
    assert len(few.ranker.candidates_of("P19", "en")) < len(every.ranker.candidates_of("P19", "en"))
    assert every.ranker.candidates_of("P19", "en") == table[("P19", "en")]


def test_exclude_ids_are_never_edited(world):
    tokenizer, items, base = world
    first = run(make_model(base), tokenizer, items, edit_languages=["en"], return_records=True)
    edited = set(first.records["group_ids"])
    second = run(make_model(base), tokenizer, items, edit_languages=["en"], exclude_ids=edited, return_records=True)
    assert not edited & set(second.records["group_ids"])


def test_editing_protocol_scores_each_edit_language_on_its_own_items(world):
    tokenizer, items, base = world
    # the "editing" datasets: to see which one each edit language used, en's holds only P19 facts, fr's only P36
    per_language = {
        "en": [i for i in items if i["relation"] == "P19"],
        "fr": [i for i in items if i["relation"] == "P36"],
    }
    model = make_model(base)
    result = evaluate_editing_protocol(model, tokenizer, per_language, "masked_lm", n_edits=2, n_retain=1,
                                       n_neighbours=2, progress=False, return_records=True, bootstrap=50,
                                       distinct_facts=True)  # fmt: skip
    relation = {item["id"]: item["relation"] for item in items}
    for group, language in zip(result.records["group_ids"], result.records["edit_languages"], strict=True):
        assert relation[group] == {"en": "P19", "fr": "P36"}[language]
    assert result.settings["label_language"] == "editing"
    assert result.settings["edit_languages"] == ["en", "fr"]
    groups = {lang: {g for g, e in zip(result.records["group_ids"], result.records["edit_languages"], strict=True)
                     if e == lang} for lang in ("en", "fr")}  # fmt: skip
    assert groups["en"] and groups["fr"] and not groups["en"] & groups["fr"]  # distinct facts across languages
    single = run(make_model(base), tokenizer, items, n_edits=2, n_retain=1, n_neighbours=2, edit_languages=["en"])
    en_edits = [e for e in result.records["edit_ids"] if e.startswith("en:")]
    assert len(set(en_edits)) == single.metrics["n_edits"]
    assert set(result.metrics["ci"]) >= {"reliability", "locality_same_relation"}
    with pytest.raises(ValueError, match="editing languages are the keys"):
        evaluate_editing_protocol(model, tokenizer, per_language, "masked_lm", edit_languages=["en"])
    with pytest.raises(ValueError, match="one dataset per language"):
        evaluate_editing_protocol(model, tokenizer, {}, "masked_lm")


def test_names_protocols():
    assert check_label_language(None, ["en", "fr"]) == "own"
    assert check_label_language("editing", ["en", "fr"]) == "editing"
    assert check_label_language("fr", ["en", "fr"]) == "fr"
    assert names_language("own", ["en", "fr"]) is None and names_language("en", ["en", "fr"]) == "en"
    with pytest.raises(ValueError, match="Unknown label_language 'zh'.*'own'.*'editing'"):
        check_label_language("zh", ["en", "fr"])
    with pytest.raises(ValueError, match="one dataset per editing language.*evaluate_editing_protocol"):
        load_cldr_facts(["en", "zh"], relations=["capital"], label_language="editing")
    own = load_cldr_facts(["en", "zh"], relations=["capital"], label_language="own")
    default = load_cldr_facts(["en", "zh"], relations=["capital"])
    assert own["test"].to_list() == default["test"].to_list()
    row = next(r for s in own.values() for r in s if r["id"] == "cldr:capital:FR")
    assert row["targets"] == ["Paris", "巴黎"]
    english = load_cldr_facts(["en", "zh"], relations=["capital"], label_language="en")
    row = next(r for s in english.values() for r in s if r["id"] == "cldr:capital:FR")
    assert row["targets"] == ["Paris", "Paris"] and row["prompts"][1] == "France的首都是[Y]。"


def test_prefix_cache_gives_the_same_records_and_is_used(world):
    tokenizer, items, base = world
    options = {"locality": "both", "extra_scorings": ("candidates",), "return_records": True}
    cached = run(make_model(base), tokenizer, items, **options)
    plain = run(make_model(base), tokenizer, items, cache_bytes=0, **options)
    assert cached.records == plain.records
    assert cached.readings["candidates"].records == plain.readings["candidates"].records
    stats = cached.settings["prefix_cache"]
    assert stats["first_block"] == 1 and stats["hits"] > stats["misses"] > 0 and stats["invalidations"] == 0
    assert plain.settings["prefix_cache"] is None
    with pytest.raises(ValueError, match="cache_bytes"):
        run(make_model(base), tokenizer, items, cache_bytes=-1)


def test_fewer_unrelated_facts_than_asked_warns_and_reads_those_there_are(world):
    tokenizer, items, base = world
    with pytest.warns(UserWarning, match="fewer than n_retain=50 unrelated facts.*12.00 per edit"):
        result = run(make_model(base), tokenizer, items, n_retain=50, return_records=True)
    assert result.settings["retain_per_edit"] == 12.0  # the other relation's 12 subjects
    assert not math.isnan(result.metrics["locality_other"])


def test_length_buckets_give_the_same_records_in_fewer_forwards(world):
    """Scored prompts right-padded to a multiple of `length_bucket` and batched by padded width: the same records
    (every reading) as one length per forward, from fewer forwards."""
    tokenizer, items, base = world
    # prompts of 8 to 11 tokens: up to 3 known words in front of some of them
    items = [{**item, "prompts": ["in " * (i % 4) + text for text in item["prompts"]]} for i, item in enumerate(items)]
    options = {"locality": "both", "extra_scorings": ("candidates",), "return_records": True}
    results, forwards = {}, {}
    for bucket in (1, 3, 8):
        model = make_model(base)
        forwards[bucket] = 0

        def count(*_, bucket=bucket):
            forwards[bucket] += 1

        handle = model.get_base_model().bert.register_forward_pre_hook(count)
        results[bucket] = run(model, tokenizer, items, length_bucket=bucket, **options)
        handle.remove()
        assert results[bucket].settings["length_bucket"] == bucket
    for bucket in (3, 8):
        assert results[bucket].records == results[1].records
        assert results[bucket].readings["candidates"].records == results[1].readings["candidates"].records
    assert forwards[8] < forwards[3] < forwards[1], forwards
    with pytest.raises(ValueError, match="length_bucket"):
        run(make_model(base), tokenizer, items, length_bucket=0)


def test_length_batches_and_buckets():
    from types import SimpleNamespace

    from hf_lime.evaluation.candidates import length_batches, length_bucket

    lengths = [5, 9, 8, 3, 16, 17]
    assert length_batches(lengths, batch_size=8) == [[3], [0], [2], [1], [4], [5]]
    assert length_batches(lengths, batch_size=8, bucket=8) == [[0, 2, 3], [1, 4], [5]]  # widths 8, 16, 24
    assert length_batches(lengths, batch_size=2, bucket=8) == [[0, 2], [3], [1, 4], [5]]
    assert length_bucket(SimpleNamespace(padding_side="right"), 8) == 8
    assert length_bucket(SimpleNamespace(padding_side="left"), 8) == 1  # left padding would move the positions
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="length_bucket"):
            length_bucket(SimpleNamespace(padding_side="right"), bad)
