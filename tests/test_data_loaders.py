"""Tests of the parallel data loaders (mLAMA, XNLI), the common schema and the group split.

Fixtures are small files written by the tests in `tmp_path`, in the real release layouts. Tests marked
`integration` read the real data in `../shared/data` (or `$HF_LIME_DATA_DIR`) and skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from hf_lime.data import (
    COLUMNS,
    SPLIT_NAMES,
    XNLI_LABELS,
    default_data_dir,
    items_to_dataset,
    load_mlama,
    load_mlama_candidates,
    load_mlama_items,
    load_xnli,
    load_xnli_from_hub,
    split_by_group,
    validate_items,
    xnli_hub_to_items,
)
from hf_lime.data import xnli as xnli_module

TEMPLATES = {
    "en": {"P19": "[X] was born in [Y] .", "P36": "The capital of [X] is [Y] ."},
    "fr": {"P19": "[X] est né à [Y].", "P36": "La capitale de [X] est [Y]."},
    "zh": {"P19": "[X]出生于[Y]。", "P36": "[X]的首都是[Y]。"},
}
N_FACTS = 40


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _fact(relation: str, i: int, lang: str) -> dict:
    return {
        "sub_uri": f"Q{i}",
        "obj_uri": f"Q{1000 + i % 5}",
        "sub_label": f"Sub{i}-{lang}",
        "obj_label": f"Obj{i % 5}-{lang}",
        "lineid": i,
        "uuid": f"{relation}-{i:03d}",
    }


def make_mlama(root: Path) -> Path:
    """A tiny mLAMA release: en, fr, zh (zh lacks every 10th fact), plus 'xx' whose only file is empty."""
    for lang, templates in TEMPLATES.items():
        lines = [{"relation": r, "template": t} for r, t in templates.items()]
        _write_jsonl(root / "mlama1.1" / lang / "templates.jsonl", lines)
        for relation in templates:
            # Facts written in reverse order: the loader must order them by lineid, not by file order.
            ids = [i for i in reversed(range(N_FACTS)) if not (lang == "zh" and i % 10 == 0)]
            _write_jsonl(root / "mlama1.1" / lang / f"{relation}.jsonl", [_fact(relation, i, lang) for i in ids])
    _write_jsonl(root / "mlama1.1" / "xx" / "templates.jsonl", [{"relation": "P19", "template": "[X] [Y]"}])
    (root / "mlama1.1" / "xx" / "P19.jsonl").write_text("", encoding="utf-8")
    objects = {"P19": {"subjects": ["Sub0-en"], "objects": ["Obj0-en", "Obj1-en"]}, "P36": {"objects": ["Obj2-en"]}}
    (root / "TREx_multilingual_objects").mkdir()
    (root / "TREx_multilingual_objects" / "en.json").write_text(json.dumps(objects), encoding="utf-8")
    return root


def make_xnli(root: Path, n_premises: int = 20, languages=("en", "fr", "zh")) -> Path:
    folder = root / "xnli"
    folder.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        lines = [
            f"Premise {k} {lang}\tHyp {k}.{j} {lang}\t{XNLI_LABELS[(k + j) % 3]}\n"
            for k in range(n_premises)
            for j in range(3)
        ]
        (folder / f"dev-{lang}.tsv").write_text("".join(lines), encoding="utf-8")
    return root


@pytest.fixture
def mlama_dir(tmp_path):
    return make_mlama(tmp_path)


@pytest.fixture
def xnli_dir(tmp_path):
    return make_xnli(tmp_path)


def _all_rows(splits: datasets.DatasetDict) -> list[dict]:
    return [row for name in SPLIT_NAMES for row in splits[name]]


def _assert_groups_disjoint(splits: datasets.DatasetDict) -> None:
    groups = {name: set(splits[name]["group"]) for name in SPLIT_NAMES}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]


# ----------------------------------------------------------------------------------------------- mLAMA


def test_mlama_items_follow_schema_and_language_order(mlama_dir):
    splits = load_mlama(mlama_dir, ["zh", "en", "fr"], relations=["P36", "P19"])
    assert list(splits) == list(SPLIT_NAMES)
    for name in SPLIT_NAMES:
        assert tuple(splits[name].column_names) == COLUMNS
        validate_items(splits[name])
    rows = _all_rows(splits)
    assert len(rows) == 2 * (N_FACTS - 4)  # zh lacks 4 facts per relation: only facts in all languages
    row = next(r for r in rows if r["id"] == "mlama:P19:P19-007")
    assert row["languages"] == ["zh", "en", "fr"]
    assert row["prompts"] == ["Sub7-zh出生于[Y]。", "Sub7-en was born in [Y] .", "Sub7-fr est né à [Y]."]
    assert row["targets"] == ["Obj2-zh", "Obj2-en", "Obj2-fr"]
    assert row["pairs"] == ["", "", ""]
    assert (row["source"], row["relation"], row["group"], row["target_id"]) == ("mlama", "P19", "Q7", "Q1002")


def test_mlama_untranslated_labels_fill_every_template(mlama_dir):
    """The LiME reference's protocol: translated templates, the label language's subject and object everywhere."""
    splits = load_mlama(mlama_dir, ["zh", "en", "fr"], relations=["P36", "P19"], label_language="en")
    row = next(r for r in _all_rows(splits) if r["id"] == "mlama:P19:P19-007")
    assert row["prompts"] == ["Sub7-en出生于[Y]。", "Sub7-en was born in [Y] .", "Sub7-en est né à [Y]."]
    assert row["targets"] == ["Obj2-en", "Obj2-en", "Obj2-en"]
    partial = load_mlama_items(mlama_dir, ["fr", "zh", "en"], relations=["P19"], min_languages=2,
                               label_language="zh")  # fmt: skip
    assert all("zh" in languages for languages in partial["languages"])  # facts without the label language drop
    with pytest.raises(ValueError, match="Unknown label_language 'de'.*one of the languages"):
        load_mlama(mlama_dir, ["en", "fr"], label_language="de")


def test_mlama_item_order_is_relation_then_lineid(mlama_dir):
    ds = load_mlama_items(mlama_dir, ["en"], relations=["P36", "P19"])
    ids = ds["id"]
    assert ids[:2] == ["mlama:P36:P36-000", "mlama:P36:P36-001"]
    assert ids[N_FACTS] == "mlama:P19:P19-000"
    # the language order changes the columns, never which items exist nor their order
    other = load_mlama_items(mlama_dir, ["fr", "en"], relations=["P36", "P19"])
    assert other["id"] == ids
    assert [p[1] for p in other["prompts"]] == [p[0] for p in ds["prompts"]]


def test_mlama_min_languages_keeps_partial_facts_in_request_order(mlama_dir):
    ds = load_mlama_items(mlama_dir, ["fr", "zh", "en"], relations=["P19"], min_languages=2)
    assert len(ds) == N_FACTS
    partial = ds.filter(lambda row: row["id"] == "mlama:P19:P19-010")[0]
    assert partial["languages"] == ["fr", "en"]
    assert partial["targets"] == ["Obj0-fr", "Obj0-en"]
    full = ds.filter(lambda row: row["id"] == "mlama:P19:P19-011")[0]
    assert full["languages"] == ["fr", "zh", "en"]


def test_mlama_splits_are_subject_disjoint_across_relations(mlama_dir):
    splits = load_mlama(mlama_dir, ["en", "fr"], seed=3)
    _assert_groups_disjoint(splits)
    split_of = {row_id: name for name in SPLIT_NAMES for row_id in splits[name]["id"]}
    for i in range(N_FACTS):  # subject Qi has a P19 and a P36 fact: both land in the same split
        assert split_of[f"mlama:P19:P19-{i:03d}"] == split_of[f"mlama:P36:P36-{i:03d}"]
    sizes = {name: len(set(splits[name]["group"])) for name in SPLIT_NAMES}
    assert sizes == {"train": 32, "validation": 4, "test": 4}


def test_mlama_cap_is_deterministic_and_seeded(mlama_dir):
    first = load_mlama_items(mlama_dir, ["en", "fr"], max_per_relation=7, seed=1)
    again = load_mlama_items(mlama_dir, ["en", "fr"], max_per_relation=7, seed=1)
    other = load_mlama_items(mlama_dir, ["en", "fr"], max_per_relation=7, seed=2)
    assert first["id"] == again["id"]
    assert first["id"] != other["id"]
    assert sorted(first["relation"]) == ["P19"] * 7 + ["P36"] * 7


def test_mlama_accepts_the_release_folder_itself_and_reads_candidates(mlama_dir):
    direct = load_mlama_items(mlama_dir / "mlama1.1", ["en"], relations=["P19"])
    assert len(direct) == N_FACTS
    candidates = load_mlama_candidates(mlama_dir, "en")
    assert candidates == {"P19": ["Obj0-en", "Obj1-en"], "P36": ["Obj2-en"]}
    with pytest.raises(ValueError, match=r"language 'fr'.*available: \['en'\]"):
        load_mlama_candidates(mlama_dir, "fr")


def test_mlama_errors_name_the_problem(mlama_dir, tmp_path):
    with pytest.raises(ValueError, match=r"No mLAMA data at .*expected a folder .*mlama1\.1"):
        load_mlama(tmp_path / "nowhere", ["en"])
    with pytest.raises(ValueError, match=r"Unknown mLAMA languages \['de'\].*available: \['en', 'fr', 'xx', 'zh'\]"):
        load_mlama(mlama_dir, ["en", "de"])
    with pytest.raises(ValueError, match=r"Unknown mLAMA relations \['P999'\].*\['P19', 'P36'\]"):
        load_mlama(mlama_dir, ["en"], relations=["P19", "P999"])
    with pytest.raises(ValueError, match=r"Language 'xx' has no mLAMA facts"):
        load_mlama(mlama_dir, ["en", "xx"], relations=["P19"])
    with pytest.raises(ValueError, match="`languages` is empty"):
        load_mlama(mlama_dir, [])
    with pytest.raises(ValueError, match=r"duplicate languages \['en'\]"):
        load_mlama(mlama_dir, ["en", "fr", "en"])
    with pytest.raises(TypeError, match="not the string"):
        load_mlama(mlama_dir, "en")
    with pytest.raises(ValueError, match=r"min_languages must be an int in \[1, 2\]"):
        load_mlama(mlama_dir, ["en", "fr"], min_languages=3)
    with pytest.raises(ValueError, match="max_per_relation must be a positive int"):
        load_mlama(mlama_dir, ["en"], max_per_relation=0)
    with pytest.raises(ValueError, match="split_sizes must be non-negative and sum to 1"):
        load_mlama(mlama_dir, ["en"], split_sizes=(0.5, 0.2, 0.2))


def test_mlama_malformed_files_report_path_and_line(mlama_dir):
    path = mlama_dir / "mlama1.1" / "fr" / "P19.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = '{"sub_uri": "Q1", "obj_uri": '
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fr[/\\]P19\.jsonl, line 5: malformed JSON"):
        load_mlama(mlama_dir, ["en", "fr"])
    lines[4] = json.dumps({"sub_uri": "Q1", "obj_uri": "Q2", "sub_label": "", "obj_label": "x", "uuid": "u"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"P19\.jsonl, line 5: missing or empty string fields \['sub_label'\]"):
        load_mlama(mlama_dir, ["en", "fr"])
    templates = mlama_dir / "mlama1.1" / "en" / "templates.jsonl"
    templates.write_text('{"relation": "P19", "template": "no slots"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"templates\.jsonl, line 1: template 'no slots' must contain"):
        load_mlama(mlama_dir, ["en"])


def test_mlama_rejects_facts_that_are_not_parallel(mlama_dir):
    path = mlama_dir / "mlama1.1" / "fr" / "P36.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    records[0]["obj_uri"] = "Q424242"
    _write_jsonl(path, records)
    with pytest.raises(ValueError, match=r"Fact 'P36-039' of P36 is not parallel: language 'fr'"):
        load_mlama(mlama_dir, ["en", "fr"], relations=["P36"])


# ----------------------------------------------------------------------------------------------- XNLI


def test_xnli_rows_become_items_grouped_by_premise(xnli_dir):
    splits = load_xnli(xnli_dir, ["fr", "en"], seed=0)
    for name in SPLIT_NAMES:
        validate_items(splits[name])
    _assert_groups_disjoint(splits)
    rows = {row["id"]: row for row in _all_rows(splits)}
    assert len(rows) == 60
    row = rows["xnli:7"]  # premise 2, hypothesis 1, label (2 + 1) % 3 = 0
    assert row["languages"] == ["fr", "en"]
    assert row["prompts"] == ["Premise 2 fr", "Premise 2 en"]
    assert row["pairs"] == ["Hyp 2.1 fr", "Hyp 2.1 en"]
    assert (row["group"], row["target_id"], row["targets"]) == ("2", "0", ["entailment", "entailment"])
    assert {len(set(splits[n]["group"])) for n in SPLIT_NAMES} == {16, 2}
    for name in SPLIT_NAMES:  # whole premises: 3 rows per group
        assert len(splits[name]) == 3 * len(set(splits[name]["group"]))


def test_xnli_header_and_numeric_labels(tmp_path):
    folder = tmp_path / "xnli"
    folder.mkdir()
    (folder / "dev-en.tsv").write_text("premise\thypo\tlabel\nA\tB\t2\nA\tC\tneutral\n", encoding="utf-8")
    rows = _all_rows(load_xnli(folder, ["en"], split_sizes=(1.0, 0.0, 0.0)))
    assert [(r["pairs"], r["target_id"], r["targets"]) for r in rows] == [
        (["B"], "2", ["contradiction"]),
        (["C"], "1", ["neutral"]),
    ]


def test_xnli_max_items_takes_whole_premises(xnli_dir):
    first = _all_rows(load_xnli(xnli_dir, ["en"], max_items=10, seed=5))
    again = _all_rows(load_xnli(xnli_dir, ["en"], max_items=10, seed=5))
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert len(first) == 10
    per_group = sorted(sum(r["group"] == g for r in first) for g in {r["group"] for r in first})
    assert per_group == [1, 3, 3, 3]


def test_xnli_errors_name_the_problem(xnli_dir, tmp_path):
    with pytest.raises(ValueError, match=r"No XNLI data at .*dev-<lang>\.tsv"):
        load_xnli(tmp_path / "nowhere", ["en"])
    with pytest.raises(ValueError, match=r"Unknown XNLI languages \['sw'\].*available: \['en', 'fr', 'zh'\]"):
        load_xnli(xnli_dir, ["en", "sw"])
    with pytest.raises(ValueError, match="duplicate languages"):
        load_xnli(xnli_dir, ["en", "en"])
    with pytest.raises(ValueError, match="`languages` is empty"):
        load_xnli(xnli_dir, [])
    fr = xnli_dir / "xnli" / "dev-fr.tsv"
    lines = fr.read_text(encoding="utf-8").splitlines()
    fr.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not line-aligned: dev-fr.tsv has 59 rows, dev-en.tsv has 60"):
        load_xnli(xnli_dir, ["en", "fr"])
    swapped = lines[:]
    swapped[5] = swapped[5].rsplit("\t", 1)[0] + "\tcontradiction"  # row 5 is 'entailment' in en
    fr.write_text("\n".join(swapped) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="XNLI row 5 has label 'entailment' in dev-en.tsv but 'contradiction'"):
        load_xnli(xnli_dir, ["en", "fr"])
    swapped[5] = swapped[5].rsplit("\t", 1)[0] + "\tmaybe"
    fr.write_text("\n".join(swapped) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev-fr\.tsv, line 6: unknown label 'maybe'"):
        load_xnli(xnli_dir, ["fr"])
    swapped[6] = "only one field"
    swapped[5] = lines[5]
    fr.write_text("\n".join(swapped) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev-fr\.tsv, line 7: expected 3 tab-separated fields, got 1"):
        load_xnli(xnli_dir, ["fr"])


HUB_LANGS = ["en", "fr", "zh"]


def _hub_record(premise_id: int, j: int, label: int) -> dict:
    """A record shaped like the Hub's xnli/all_languages (after `datasets` decoding)."""
    return {
        "premise": {lang: f"P{premise_id}-{lang}" for lang in HUB_LANGS},
        "hypothesis": {"language": sorted(HUB_LANGS), "translation": [f"H{j}-{lang}" for lang in sorted(HUB_LANGS)]},
        "label": label,
    }


def test_xnli_hub_records_convert_to_items():
    records = [_hub_record(0, 0, 1), _hub_record(1, 0, 0), _hub_record(0, 1, 2)]
    items = xnli_hub_to_items(records, ["zh", "en"])
    assert [i["group"] for i in items] == ["0", "1", "0"]  # grouped by premise, not by position
    assert items[2]["prompts"] == ["P0-zh", "P0-en"]
    assert items[2]["pairs"] == ["H1-zh", "H1-en"]
    assert (items[2]["target_id"], items[2]["targets"]) == ("2", ["contradiction", "contradiction"])
    validate_items(items_to_dataset(items))
    with pytest.raises(ValueError, match=r"lacks languages \['de'\]"):
        xnli_hub_to_items(records, ["de"])
    with pytest.raises(ValueError, match="label -1"):
        xnli_hub_to_items([_hub_record(0, 0, -1)], ["en"])


def test_load_xnli_from_hub_reads_the_documented_features(monkeypatch):
    features = datasets.Features(
        {
            "premise": datasets.Translation(languages=HUB_LANGS),
            "hypothesis": datasets.TranslationVariableLanguages(languages=HUB_LANGS),
            "label": datasets.ClassLabel(names=list(XNLI_LABELS)),
        }
    )
    raw = [_hub_record(k, j, (k + j) % 3) for k in range(10) for j in range(3)]
    encoded = {
        "premise": [r["premise"] for r in raw],
        "hypothesis": [
            dict(zip(r["hypothesis"]["language"], r["hypothesis"]["translation"], strict=True)) for r in raw
        ],
        "label": [r["label"] for r in raw],
    }
    hub = datasets.Dataset.from_dict(encoded, features=features)
    calls = []

    def fake_load_dataset(path, name, split, **kwargs):
        calls.append((path, name, split, kwargs))
        return hub

    monkeypatch.setattr(xnli_module.datasets, "load_dataset", fake_load_dataset)
    splits = load_xnli_from_hub(["fr", "en"], split="test", max_items=12, seed=0, cache_dir="/tmp/c")
    assert calls == [("facebook/xnli", "all_languages", "test", {"cache_dir": "/tmp/c"})]
    rows = _all_rows(splits)
    assert len(rows) == 12 and len({r["group"] for r in rows}) == 4
    _assert_groups_disjoint(splits)
    row = rows[0]
    k, j = int(row["group"]), int(row["id"].split(":")[1]) % 3
    assert row["prompts"] == [f"P{k}-fr", f"P{k}-en"] and row["pairs"] == [f"H{j}-fr", f"H{j}-en"]
    with pytest.raises(ValueError, match=r"Unknown XNLI languages \['xx'\]"):
        load_xnli_from_hub(["en", "xx"])
    assert len(calls) == 1  # checked before any download


# ----------------------------------------------------------------------------------------------- splits and schema


def test_split_by_group_is_disjoint_sized_and_deterministic():
    groups = [f"g{i // 2}" for i in range(200)]  # 100 groups of 2 rows
    ds = datasets.Dataset.from_dict({"group": groups, "x": list(range(200))})
    splits = split_by_group(ds, (0.7, 0.2, 0.1), seed=4)
    _assert_groups_disjoint(splits)
    assert [len(set(splits[n]["group"])) for n in SPLIT_NAMES] == [70, 20, 10]
    assert [len(splits[n]) for n in SPLIT_NAMES] == [140, 40, 20]
    for name in SPLIT_NAMES:
        assert splits[name]["x"] == sorted(splits[name]["x"])  # original order kept
    assert split_by_group(ds, (0.7, 0.2, 0.1), seed=4)["test"]["x"] == splits["test"]["x"]
    assert split_by_group(ds, (0.7, 0.2, 0.1), seed=5)["test"]["x"] != splits["test"]["x"]
    # the assignment depends on the set of groups, not on row order
    shuffled = ds.select(list(reversed(range(200))))
    assert set(split_by_group(shuffled, (0.7, 0.2, 0.1), seed=4)["test"]["group"]) == set(splits["test"]["group"])
    empty = split_by_group(ds.select([]), (0.8, 0.1, 0.1), seed=0)
    assert [len(empty[n]) for n in SPLIT_NAMES] == [0, 0, 0]


def test_split_by_group_rejects_bad_arguments():
    ds = datasets.Dataset.from_dict({"group": ["a"], "x": [1]})
    with pytest.raises(ValueError, match="three fractions"):
        split_by_group(ds, (0.8, 0.2))
    with pytest.raises(ValueError, match="non-negative and sum to 1"):
        split_by_group(ds, (1.2, -0.1, -0.1))
    with pytest.raises(TypeError, match="seed must be an int"):
        split_by_group(ds, seed="0")
    with pytest.raises(ValueError, match="group_column 'subject' is not a column"):
        split_by_group(ds, group_column="subject")


def _item(**changes) -> dict:
    item = {
        "id": "x:1",
        "source": "xnli",
        "relation": "xnli",
        "group": "0",
        "target_id": "1",
        "languages": ["en", "fr"],
        "prompts": ["p", "p"],
        "pairs": ["h", "h"],
        "targets": ["neutral", "neutral"],
    }
    item.update(changes)
    return item


def test_validate_items_catches_each_schema_violation():
    validate_items(items_to_dataset([_item(), _item(id="x:2")]))
    with pytest.raises(ValueError, match="duplicate id 'x:1'"):
        validate_items(items_to_dataset([_item(), _item()]))
    with pytest.raises(ValueError, match="not aligned with `languages`"):
        validate_items(items_to_dataset([_item(targets=["neutral"])]))
    with pytest.raises(ValueError, match=r"duplicate languages \['en', 'en'\]"):
        validate_items(items_to_dataset([_item(languages=["en", "en"])]))
    with pytest.raises(ValueError, match="source 'wiki' is not one of"):
        validate_items(items_to_dataset([_item(source="wiki")]))
    with pytest.raises(ValueError, match="column 'group' must be a non-empty string"):
        validate_items(items_to_dataset([_item(group="")]))
    with pytest.raises(ValueError, match="Columns must be exactly"):
        validate_items(items_to_dataset([_item()]).remove_columns("pairs"))


# ----------------------------------------------------------------------------------------------- determinism

_DUMP_SCRIPT = """
import json, sys, types
# Import hf_lime.data without hf_lime/__init__ (which loads peft/torch): the data code needs neither.
package = types.ModuleType("hf_lime")
package.__path__ = [sys.argv[2]]
sys.modules["hf_lime"] = package
from hf_lime.data import load_cldr_facts, load_mlama, load_xnli
root = sys.argv[1]
out = {
    "mlama": load_mlama(root, ["zh", "fr", "en"], min_languages=2, max_per_relation=30, seed=7),
    "xnli": load_xnli(root, ["zh", "en", "fr"], seed=7, max_items=40),
    "cldr": load_cldr_facts(["ru", "en", "zh"], relations=["capital", "currency"], seed=7),
}
print(json.dumps({k: {s: d.to_dict() for s, d in v.items()} for k, v in out.items()}, ensure_ascii=False))
"""


def test_loaders_do_not_depend_on_the_hash_seed(tmp_path):
    """The LiME reference tied rows to languages through set() order; ours must not change with PYTHONHASHSEED."""
    root = make_xnli(make_mlama(tmp_path))
    script = tmp_path / "dump.py"
    script.write_text(_DUMP_SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), str(Path(xnli_module.__file__).parents[1])],
            env={**env, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "4242")
    ]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        outputs.append(json.loads(stdout))
    assert outputs[0] == outputs[1]
    mlama = outputs[0]["mlama"]
    assert sum(len(split["id"]) for split in mlama.values()) == 60
    languages = [langs for split in mlama.values() for langs in split["languages"]]
    assert {tuple(langs) for langs in languages} == {("zh", "fr", "en"), ("fr", "en")}  # request order kept
    assert outputs[0]["cldr"]["train"]["languages"][0] == ["ru", "en", "zh"]


# ----------------------------------------------------------------------------------------------- real data

REAL = default_data_dir()
real_data = pytest.mark.skipif(
    not (REAL / "mlama1.1").is_dir() or not (REAL / "xnli").is_dir(),
    reason=f"real data not found at {REAL} (set HF_LIME_DATA_DIR to the folder holding mlama1.1/ and xnli/)",
)


@pytest.mark.integration
@real_data
def test_real_mlama_facts_are_aligned_across_languages():
    languages, relations = ["en", "fr", "de", "zh", "ru"], ["P19", "P36", "P37"]
    splits = load_mlama(REAL, languages, relations=relations, max_per_relation=150, seed=0)
    rows = _all_rows(splits)
    assert 300 <= len(rows) <= 450
    _assert_groups_disjoint(splits)
    raw = {}  # uuid -> {lang: record}, read independently of the loader
    for lang in languages:
        for relation in relations:
            with open(REAL / "mlama1.1" / lang / f"{relation}.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    record = json.loads(line)
                    raw.setdefault(record["uuid"], {})[lang] = record
    for row in rows:
        records = raw[row["id"].split(":", 2)[2]]
        assert row["languages"] == languages
        assert {records[lang]["obj_uri"] for lang in languages} == {row["target_id"]}
        assert row["targets"] == [records[lang]["obj_label"] for lang in languages]
        for lang, prompt in zip(languages, row["prompts"], strict=True):
            assert records[lang]["sub_label"] in prompt and "[Y]" in prompt and "[X]" not in prompt
    zh_row = next(r for r in rows if r["relation"] == "P36")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh_row["prompts"][3])  # Han characters in the zh prompt
    assert len(load_mlama_candidates(REAL, "zh")) == 33


@pytest.mark.integration
@real_data
def test_real_xnli_fifteen_languages():
    languages = ["en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]
    splits = load_xnli(REAL, languages, seed=0)
    rows = _all_rows(splits)
    assert len(rows) == 1998
    assert len({r["group"] for r in rows}) == 666
    _assert_groups_disjoint(splits)
    assert [len(set(splits[n]["group"])) for n in SPLIT_NAMES] == [533, 66, 67]  # round(666 * 0.8), ...
    by_group = {}
    for row in rows:
        assert row["languages"] == languages and len(set(row["targets"])) == 1
        by_group.setdefault(row["group"], set()).add(row["prompts"][0])
    assert all(len(premises) == 1 for premises in by_group.values())  # 3 rows of a group share the premise
