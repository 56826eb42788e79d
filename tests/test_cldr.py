"""Tests of the CLDR facts generated through babel (no network, no shared data needed)."""

from __future__ import annotations

import collections
import doctest
import sys

import pytest

pytest.importorskip("babel", reason="CLDR facts need babel (pip install babel)")

from hf_lime.data import (  # noqa: E402
    CLDR_RELATIONS,
    DEFAULT_CLDR_LANGUAGES,
    SPLIT_NAMES,
    build_cldr_items,
    cldr_languages,
    items_to_dataset,
    load_cldr_facts,
    validate_items,
)
from hf_lime.data import cldr as cldr_module  # noqa: E402

NON_LATIN = {"ru", "el", "ar", "he", "hi", "th", "zh", "ja", "ko"}


@pytest.fixture(scope="module")
def default_items():
    return build_cldr_items()


def _by_id(items):
    return {item["id"]: item for item in items}


def test_default_languages_cover_many_scripts():
    assert len(DEFAULT_CLDR_LANGUAGES) >= 12
    assert NON_LATIN <= set(DEFAULT_CLDR_LANGUAGES)
    assert len(set(DEFAULT_CLDR_LANGUAGES)) == len(DEFAULT_CLDR_LANGUAGES)


def test_every_template_has_both_slots():
    for lang in DEFAULT_CLDR_LANGUAGES:
        assert set(cldr_module.TEMPLATES[lang]) == set(CLDR_RELATIONS), lang
        for relation, template in cldr_module.TEMPLATES[lang].items():
            assert template.count("[X]") == 1 and template.count("[Y]") == 1, (lang, relation)


def test_default_facts_follow_the_schema_with_enough_facts_per_relation(default_items):
    validate_items(items_to_dataset(default_items))
    counts = collections.Counter(item["relation"] for item in default_items)
    assert set(counts) == set(CLDR_RELATIONS)
    assert counts["capital"] >= 100 and counts["official_language"] >= 120 and counts["currency"] >= 200, counts
    for item in default_items:
        assert item["languages"] == list(DEFAULT_CLDR_LANGUAGES)
        assert item["id"] == f"cldr:{item['relation']}:{item['group']}"
        assert all(p.count("[Y]") == 1 and "[X]" not in p for p in item["prompts"])
        assert all(target.strip() for target in item["targets"])


def test_known_facts_in_several_scripts(default_items):
    items = _by_id(default_items)
    france = items["cldr:capital:FR"]
    labels = dict(zip(france["languages"], france["targets"], strict=True))
    assert france["target_id"] == "Europe/Paris"
    assert (labels["en"], labels["zh"], labels["ru"], labels["ja"], labels["ar"]) == (
        "Paris",
        "巴黎",
        "Париж",
        "パリ",
        "باريس",
    )
    prompts = dict(zip(france["languages"], france["prompts"], strict=True))
    assert prompts["en"] == "The capital of France is [Y]."
    assert prompts["zh"] == "法国的首都是[Y]。"
    assert items["cldr:official_language:JP"]["target_id"] == "ja"
    assert items["cldr:currency:JP"]["target_id"] == "JPY"
    assert items["cldr:currency:FR"]["target_id"] == "EUR"
    ukraine = dict(zip(DEFAULT_CLDR_LANGUAGES, items["cldr:capital:UA"]["targets"], strict=True))
    assert ukraine["ru"] == "Киев" and ukraine["zh"] == "基辅"  # renamed zone (Europe/Kyiv) still localised


def test_ambiguous_facts_are_dropped(default_items):
    ids = set(_by_id(default_items))
    assert "cldr:official_language:CH" not in ids  # de, fr, it
    assert "cldr:currency:PA" not in ids  # PAB and USD
    assert "cldr:capital:CH" not in ids and "cldr:capital:US" not in ids  # capital has no time zone


def test_capitals_in_non_latin_languages_are_localised(default_items):
    """Without CLDR data, a city would fall back to the Latin zone id; such facts must be dropped instead."""
    for item in default_items:
        if item["relation"] != "capital":
            continue
        for lang, target in zip(item["languages"], item["targets"], strict=True):
            if lang in NON_LATIN:
                assert not any("a" <= ch.lower() <= "z" for ch in target), (item["id"], lang, target)
            assert "(" not in target, (item["id"], lang, target)


def test_capital_table_matches_cldr_zone_territories():
    from babel.core import get_global

    zone_territories = get_global("zone_territories")
    aliases = get_global("zone_aliases")
    for country, zone in cldr_module.CAPITAL_TIME_ZONES.items():
        assert zone_territories.get(aliases.get(zone, zone)) == country, (country, zone)


def test_language_order_and_ids_are_stable():
    forward = build_cldr_items(["en", "zh", "ar"], relations=["currency", "capital"])
    backward = build_cldr_items(["ar", "zh", "en"], relations=["currency", "capital"])
    assert [i["id"] for i in forward] == [i["id"] for i in backward]
    assert [i["target_id"] for i in forward] == [i["target_id"] for i in backward]
    assert [i["targets"][::-1] for i in forward] == [i["targets"] for i in backward]
    assert forward[0]["relation"] == "currency" and forward[-1]["relation"] == "capital"
    # fewer languages can only keep more facts (a fact needs names in every requested language)
    everyone = build_cldr_items(list(DEFAULT_CLDR_LANGUAGES), relations=["currency", "capital"])
    assert {i["id"] for i in everyone} <= {i["id"] for i in forward}


def test_splits_are_country_disjoint_and_seeded():
    splits = load_cldr_facts(["en", "ko"], seed=1)
    assert list(splits) == list(SPLIT_NAMES)
    groups = {name: set(splits[name]["group"]) for name in SPLIT_NAMES}
    assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"])
    assert not groups["validation"] & groups["test"]
    countries = len(set().union(*groups.values()))
    assert abs(len(groups["train"]) - 0.8 * countries) <= 1
    assert load_cldr_facts(["en", "ko"], seed=1)["test"]["id"] == splits["test"]["id"]
    assert load_cldr_facts(["en", "ko"], seed=2)["test"]["id"] != splits["test"]["id"]


def test_custom_templates_add_a_language():
    dutch = {
        "capital": "De hoofdstad van [X] is [Y].",
        "official_language": "De officiële taal van [X] is het [Y].",
        "currency": "De munteenheid van [X] is de [Y].",
    }
    assert "nl" in cldr_languages({"nl": dutch})
    items = _by_id(build_cldr_items(["nl", "en"], relations=["capital"], templates={"nl": dutch}))
    assert items["cldr:capital:BE"]["prompts"][0] == "De hoofdstad van België is [Y]."
    assert items["cldr:capital:BE"]["targets"] == ["Brussel", "Brussels"]


def test_label_language_puts_one_languages_names_in_every_template():
    """The reference's protocol: translated templates, one language's country and object names everywhere; the same
    facts (and so the same splits) as the translated protocol."""
    translated = load_cldr_facts(["en", "zh"], relations=["capital"])
    untranslated = load_cldr_facts(["en", "zh"], relations=["capital"], label_language="en")
    assert untranslated["test"]["id"] == translated["test"]["id"]
    row = next(r for s in untranslated.values() for r in s if r["id"] == "cldr:capital:FR")
    assert row["prompts"] == ["The capital of France is [Y].", "France的首都是[Y]。"]
    assert row["targets"] == ["Paris", "Paris"]
    with pytest.raises(ValueError, match=r"Unknown label_language 'fr'.*'own'.*'editing'.*\['en', 'zh'\]"):
        load_cldr_facts(["en", "zh"], label_language="fr")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"No CLDR template for language 'nl'.*languages with templates: \['ar'"):
        build_cldr_items(["en", "nl"])
    with pytest.raises(ValueError, match=r"relations must be distinct names among .*\['population'\]"):
        build_cldr_items(["en"], relations=["population"])
    with pytest.raises(TypeError, match="not the string 'capital'"):
        build_cldr_items(["en"], relations="capital")
    with pytest.raises(ValueError, match=r"must contain '\[X\]' and '\[Y\]'"):
        build_cldr_items(["en"], templates={"en": {"capital": "The capital is [Y]."}})
    with pytest.raises(ValueError, match="unknown relation 'anthem'"):
        build_cldr_items(["en"], templates={"en": {"anthem": "[X] [Y]"}})
    with pytest.raises(ValueError, match="babel has no CLDR locale for language 'qq'"):
        build_cldr_items(["qq"], templates={"qq": dict.fromkeys(CLDR_RELATIONS, "[X] [Y]")})
    with pytest.raises(ValueError, match="duplicate languages"):
        load_cldr_facts(["en", "en"])
    with pytest.raises(ValueError, match="sum to 1"):
        load_cldr_facts(["en"], split_sizes=(0.9, 0.2, 0.0))


def test_missing_babel_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "babel", None)
    with pytest.raises(ImportError, match="pip install babel"):
        build_cldr_items(["en"])


def test_docstring_examples_run():
    for module_name in ("hf_lime.data.cldr", "hf_lime.data.splits"):
        result = doctest.testmod(sys.modules[module_name], optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module_name
