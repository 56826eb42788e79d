"""Tests for hf_lime.data.episodes: cross-lingual edit / update / retain episodes and their collator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_tokenizers import build_byte_bpe_tokenizer, build_wordpiece_tokenizer

from hf_lime.data.encoding import IGNORE_INDEX, target_token_ids
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset, episode_languages

LANGUAGES = ["en", "fr", "de"]
TEMPLATES = {
    "P19": {"en": "[X] was born in [Y] .", "fr": "[X] est né à [Y] .", "de": "[X] ist in [Y] geboren ."},
    "P36": {
        "en": "the capital of [X] is [Y] .",
        "fr": "la capitale de [X] est [Y] .",
        "de": "die Hauptstadt von [X] ist [Y] .",
    },
    "P1": {"en": "[X] is [Y] .", "fr": "[X] est [Y] .", "de": "[X] ist [Y] ."},
}
CITIES = {
    "Q90": {"en": "Paris", "fr": "Paris", "de": "Paris"},
    "Q64": {"en": "Berlin", "fr": "Berlin", "de": "Berlin"},
    "Q2807": {"en": "Madrid", "fr": "Madrid", "de": "Madrid"},
    "Q2044": {"en": "Florence", "fr": "Florence", "de": "Florence"},
    "Q456": {"en": "Lyon"},  # labelled in English only
}
# (relation, subject, object, languages the fact has)
FACTS = [
    ("P19", "Dante", "Q2044", ("en", "fr", "de")),
    ("P19", "Goethe", "Q64", ("en", "fr", "de")),
    ("P19", "Picasso", "Q2807", ("en", "fr")),
    ("P19", "Cat", "Q456", ("en",)),
    ("P19", "Dog", "Q90", ("en", "fr", "de")),
    ("P36", "France", "Q90", ("en", "fr", "de")),
    ("P36", "Germany", "Q64", ("en", "fr", "de")),
    ("P36", "Spain", "Q2807", ("en", "de")),
    ("P1", "Italy", "Q2044", ("en", "fr", "de")),  # the only object of its relation: never editable
]
XNLI_LABELS = ["entailment", "neutral", "contradiction"]


def make_items() -> list[dict]:
    """Parallel items in the loaders' schema: mLAMA-like facts and XNLI-like pairs."""
    items = []
    for relation, subject, obj, langs in FACTS:
        items.append(
            {
                "id": f"{relation}-{subject}",
                "source": "mlama",
                "relation": relation,
                "group": subject,
                "target_id": obj,
                "languages": list(langs),
                "prompts": [TEMPLATES[relation][lang].replace("[X]", subject) for lang in langs],
                "pairs": [""] * len(langs),
                "targets": [CITIES[obj][lang] for lang in langs],
            }
        )
    for row, (premise, label) in enumerate([("a man sleeps", 0), ("a dog runs", 1), ("a cat sleeps", 2)]):
        items.append(
            {
                "id": f"xnli-{row}",
                "source": "xnli",
                "relation": "xnli",
                "group": f"premise-{row}",
                "target_id": str(label),
                "languages": ["en", "fr"],
                "prompts": [premise, premise.replace("a ", "Le ")],
                "pairs": ["a woman runs", "Le chat dort"],
                "targets": [XNLI_LABELS[label]] * 2,
            }
        )
    return items


def make_wide_items() -> list[dict]:
    """Synthetic facts in eight languages: many possible language orders, so order bugs show up."""
    languages = ["en", "fr", "de", "es", "it", "nl", "pt", "ru"]
    items = []
    for n in range(16):
        langs = languages[n % 3 :]
        items.append(
            {
                "id": f"wide-{n}",
                "source": "mlama",
                "relation": f"P{n % 2}",
                "group": f"subject-{n % 5}",
                "target_id": f"Q{n % 4}",
                "languages": langs,
                "prompts": [f"s{n} {lang} [Y] ." for lang in langs],
                "pairs": [""] * len(langs),
                "targets": [f"o{n % 4}-{lang}" for lang in langs],
            }
        )
    return items


def make_dataset(items=None):
    import datasets

    return datasets.Dataset.from_list(items if items is not None else make_items())


@pytest.fixture(scope="module")
def items():
    return make_items()


@pytest.fixture(scope="module")
def by_id(items):
    return {item["id"]: item for item in items}


def _label_owner(items):
    """(relation, language, label) -> target_id, to recover which object a new target names."""
    return {
        (item["relation"], lang, label): item["target_id"]
        for item in items
        for lang, label in zip(item["languages"], item["targets"], strict=True)
    }


def _all_episodes(dataset):
    return [dataset[i] for i in range(len(dataset))]


# --- structure and language correctness ----------------------------------------------------------------------------


def test_episode_structure(items):
    dataset = EpisodeDataset(make_dataset(items), LANGUAGES, n_edit=2, n_retain=3, num_episodes=7)
    assert len(dataset) == 7
    episode = dataset[3]
    assert set(episode) == {"edit", "update", "retain"}
    assert (len(episode["edit"]), len(episode["update"]), len(episode["retain"])) == (2, 2, 3)
    keys = {"prompt", "pair", "target", "language", "lang_id", "item_id"}
    assert all(set(example) == keys for part in episode.values() for example in part)


def test_several_update_languages_per_edit(items, by_id):
    one = EpisodeDataset(items, LANGUAGES, n_edit=1, n_retain=2, num_episodes=20, seed=3)
    many = EpisodeDataset(items, LANGUAGES, n_edit=1, n_retain=2, num_episodes=20, seed=3, n_update=3)
    for index in range(20):
        first, episode = one[index], many[index]
        assert episode["edit"] == first["edit"] and episode["update"][0] == first["update"][0]  # same first draw
        languages = [example["language"] for example in episode["update"]]
        assert len(set(languages)) == len(languages) <= 3
        edited = episode["edit"][0]
        item = by_id[edited["item_id"]]
        for example in episode["update"]:
            assert example["item_id"] == edited["item_id"]
            assert example["prompt"] == item["prompts"][item["languages"].index(example["language"])]
    assert max(len(many[i]["update"]) for i in range(20)) > 1
    with pytest.raises(ValueError, match="n_update"):
        EpisodeDataset(items, LANGUAGES, n_update=0)


def test_languages_items_and_lang_ids_are_consistent(items, by_id):
    dataset = EpisodeDataset(items, LANGUAGES, n_edit=2, n_retain=3, num_episodes=60, seed=3)
    for episode in _all_episodes(dataset):
        edited_ids = [example["item_id"] for example in episode["edit"]]
        assert [example["item_id"] for example in episode["update"]] == edited_ids
        assert len(set(edited_ids)) == len(edited_ids)
        retain_ids = [example["item_id"] for example in episode["retain"]]
        assert not set(retain_ids) & set(edited_ids) and len(set(retain_ids)) == len(retain_ids)
        for example in (example for part in episode.values() for example in part):
            item = by_id[example["item_id"]]
            position = item["languages"].index(example["language"])
            assert example["prompt"] == item["prompts"][position]
            assert example["pair"] == item["pairs"][position]
            assert example["lang_id"] == LANGUAGES.index(example["language"])
        for example in episode["retain"]:
            item = by_id[example["item_id"]]
            assert example["target"] == item["targets"][item["languages"].index(example["language"])]


def test_sampled_languages_respect_the_settings(items):
    dataset = EpisodeDataset(
        items, LANGUAGES, edit_languages=["fr"], update_languages=["de"], retain_languages=["en"], num_episodes=30
    )
    for episode in _all_episodes(dataset):
        assert {example["language"] for example in episode["edit"]} == {"fr"}
        assert {example["language"] for example in episode["update"]} == {"de"}
        assert {example["language"] for example in episode["retain"]} == {"en"}
    # Only facts with both French and German prompts (and a new target labelled in both) can be edited.
    assert set(dataset.usable_item_ids) == {"P19-Dante", "P19-Goethe", "P19-Dog", "P36-France", "P36-Germany"}


def test_all_languages_are_eventually_used(items):
    dataset = EpisodeDataset(items, LANGUAGES, n_edit=1, n_retain=2, num_episodes=120)
    seen = {part: set() for part in ("edit", "update", "retain")}
    pairs = set()
    for episode in _all_episodes(dataset):
        for part, examples in episode.items():
            seen[part] |= {example["language"] for example in examples}
        pairs.add((episode["edit"][0]["language"], episode["update"][0]["language"]))
    assert all(languages == set(LANGUAGES) for languages in seen.values())
    assert ("en", "en") in pairs and len({edit for edit, update in pairs if edit != update}) >= 2


# --- new targets ---------------------------------------------------------------------------------------------------


def test_alternative_targets_are_other_objects_of_the_same_relation(items, by_id):
    owner = _label_owner(items)
    dataset = EpisodeDataset(items, LANGUAGES, n_edit=2, n_retain=2, num_episodes=80, seed=11)
    for episode in _all_episodes(dataset):
        for edit, update in zip(episode["edit"], episode["update"], strict=True):
            item = by_id[edit["item_id"]]
            edit_target = owner[(item["relation"], edit["language"], edit["target"])]
            update_target = owner[(item["relation"], update["language"], update["target"])]
            assert edit_target == update_target != item["target_id"]


def test_items_without_an_alternative_are_skipped(items):
    dataset = EpisodeDataset(items, LANGUAGES, n_retain=2)
    assert "P1-Italy" not in dataset.usable_item_ids
    assert "P19-Cat" in dataset.usable_item_ids  # English-only, with English-labelled alternatives
    assert len(dataset) == len(dataset.usable_item_ids) == len(items) - 1
    first_edits = [dataset[i]["edit"][0]["item_id"] for i in range(len(dataset))]
    assert first_edits == dataset.usable_item_ids  # one epoch edits every usable item once
    unusable = [item for item in items if item["relation"] == "P1"] + items[-3:-1]
    with pytest.raises(ValueError, match="can be edited"):
        EpisodeDataset(unusable, LANGUAGES, n_retain=1, edit_languages=["de"], update_languages=["de"])


def test_xnli_alternative_is_another_label_name(items, by_id):
    xnli = [item for item in items if item["source"] == "xnli"]
    dataset = EpisodeDataset(xnli, ["en", "fr"], n_edit=1, n_retain=2, num_episodes=30)
    for episode in _all_episodes(dataset):
        edit, update = episode["edit"][0], episode["update"][0]
        gold = by_id[edit["item_id"]]["targets"][0]
        assert edit["target"] == update["target"] != gold
        assert edit["target"] in XNLI_LABELS
        assert edit["pair"] in by_id[edit["item_id"]]["pairs"]


def test_gold_mode_keeps_the_items_own_target(items, by_id):
    dataset = EpisodeDataset(items, LANGUAGES, n_retain=2, new_target="gold", num_episodes=20)
    assert "P1-Italy" in dataset.usable_item_ids
    for episode in _all_episodes(dataset):
        for example in episode["edit"] + episode["update"]:
            item = by_id[example["item_id"]]
            assert example["target"] == item["targets"][item["languages"].index(example["language"])]


# --- retain items --------------------------------------------------------------------------------------------------


def test_retain_items_avoid_the_edited_group_when_possible(items, by_id):
    shared_subject = [dict(item) for item in items]
    shared_subject.append({**by_id["P36-France"], "id": "P36-France-bis", "group": "Dante"})
    dataset = EpisodeDataset(shared_subject, LANGUAGES, n_retain=4, num_episodes=len(shared_subject) * 3)
    groups = {item["id"]: item["group"] for item in shared_subject}
    for episode in _all_episodes(dataset):
        edited_groups = {groups[example["item_id"]] for example in episode["edit"]}
        assert not edited_groups & {groups[example["item_id"]] for example in episode["retain"]}


def test_retain_falls_back_to_other_items_of_the_same_group(items):
    same_group = [{**item, "group": "all"} for item in items]
    dataset = EpisodeDataset(same_group, LANGUAGES, n_retain=3, num_episodes=5)
    for episode in _all_episodes(dataset):
        assert len(episode["retain"]) == 3
        assert episode["edit"][0]["item_id"] not in {example["item_id"] for example in episode["retain"]}


# --- determinism ---------------------------------------------------------------------------------------------------


def test_same_seed_same_episodes_in_any_access_order(items):
    a = EpisodeDataset(make_dataset(items), LANGUAGES, n_edit=2, n_retain=3, num_episodes=20, seed=5)
    b = EpisodeDataset(items, LANGUAGES, n_edit=2, n_retain=3, num_episodes=20, seed=5)
    assert [a[i] for i in range(20)] == [b[i] for i in reversed(range(20))][::-1]
    assert a[-1] == a[19]
    c = EpisodeDataset(items, LANGUAGES, n_edit=2, n_retain=3, num_episodes=20, seed=6)
    assert [a[i] for i in range(20)] != [c[i] for i in range(20)]


# The child loads hf_lime.data.episodes without running the package __init__ files (which import peft and
# transformers, ~10-30 s here): the module under test needs only torch.
_SUBPROCESS_SCRIPT = """
import json, sys, types
for name, path in (("hf_lime", sys.argv[1]), ("hf_lime.data", sys.argv[1] + "/data")):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
from hf_lime.data.episodes import EpisodeDataset
config = json.load(sys.stdin)
dataset = EpisodeDataset(config["items"], config["languages"], n_edit=2, n_retain=3, num_episodes=25, seed=1)
print(json.dumps({"hash": hash("hf_lime"), "episodes": [dataset[i] for i in range(len(dataset))]}))
"""


def test_episodes_do_not_depend_on_the_python_hash_seed():
    # One child process with a string hash seed other than ours.
    import hf_lime.data

    child_seed = "4242" if os.environ.get("PYTHONHASHSEED") != "4242" else "7"
    env = {**os.environ, "PYTHONHASHSEED": child_seed, "OMP_NUM_THREADS": "1"}
    wide = make_wide_items()
    languages = sorted({lang for item in wide for lang in item["languages"]}, reverse=True)
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_SCRIPT, str(Path(hf_lime.data.__file__).parents[1])],
        input=json.dumps({"items": wide, "languages": languages}),
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)
    assert child["hash"] != hash("hf_lime"), "the child process must run with a different string hash seed"
    local = EpisodeDataset(make_dataset(wide), languages, n_edit=2, n_retain=3, num_episodes=25, seed=1)
    assert child["episodes"] == [local[i] for i in range(25)]


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"edit_languages": ["en", "es"]}, r"\['es'\].*not in languages"),
        ({"retain_languages": "en"}, "list of language codes"),
        ({"n_edit": 0}, "n_edit"),
        ({"n_retain": 100}, "n_retain"),
        ({"num_episodes": 0}, "num_episodes"),
        ({"new_target": "random"}, "alternative"),
        ({"languages": ["en", "en"]}, "duplicate languages"),
        ({"languages": []}, "is empty"),
    ],
)
def test_invalid_arguments(items, kwargs, match):
    arguments = {"items": items, "languages": LANGUAGES, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        EpisodeDataset(**arguments)


def test_invalid_items_and_indices(items):
    with pytest.raises(ValueError, match="lacks the keys"):
        EpisodeDataset([{k: v for k, v in item.items() if k != "group"} for item in items], LANGUAGES)
    with pytest.raises(ValueError, match="same length"):
        EpisodeDataset([{**items[0], "targets": ["Paris"]}, *items[1:]], LANGUAGES)
    with pytest.raises(ValueError, match="unique"):
        EpisodeDataset([*items, items[0]], LANGUAGES)
    dataset = EpisodeDataset(items, LANGUAGES, num_episodes=3)
    with pytest.raises(IndexError):
        dataset[3]


def test_languages_outside_the_list_are_ignored(items):
    dataset = EpisodeDataset(items, ["fr", "en"], n_retain=2, num_episodes=40)
    for episode in _all_episodes(dataset):
        for example in (example for part in episode.values() for example in part):
            assert example["language"] in ("fr", "en")
            assert example["lang_id"] == ["fr", "en"].index(example["language"])


# --- presets -------------------------------------------------------------------------------------------------------


def test_episode_language_presets():
    assert episode_languages("monolingual", LANGUAGES) == {
        "edit_languages": ["en"],
        "update_languages": ["en"],
        "retain_languages": ["en"],
    }
    assert episode_languages("pairwise", LANGUAGES, pair=("en", "de"))["update_languages"] == ["en", "de"]
    assert episode_languages("pairwise", LANGUAGES, edit_language="fr")["edit_languages"] == ["fr", "en"]
    assert episode_languages("all", LANGUAGES)["retain_languages"] == LANGUAGES
    with pytest.raises(ValueError, match="allowed presets"):
        episode_languages("bilingual", LANGUAGES)
    with pytest.raises(ValueError, match="not in languages"):
        episode_languages("monolingual", LANGUAGES, edit_language="es")
    with pytest.raises(ValueError, match="two different"):
        episode_languages("pairwise", LANGUAGES, pair=("en", "en"))


def test_presets_feed_the_dataset(items):
    dataset = EpisodeDataset(
        items, LANGUAGES, n_retain=2, num_episodes=10, **episode_languages("monolingual", LANGUAGES)
    )
    assert {ex["language"] for episode in _all_episodes(dataset) for part in episode.values() for ex in part} == {"en"}


# --- collator ------------------------------------------------------------------------------------------------------


def _fact_items(items):
    return [item for item in items if item["source"] == "mlama"]


def test_collator_masked_lm(items):
    tok = build_wordpiece_tokenizer()
    dataset = EpisodeDataset(_fact_items(items), LANGUAGES, n_edit=2, n_retain=3, num_episodes=4, seed=2)
    episodes = [dataset[0], dataset[1]]
    batch = EpisodeCollator(tok, "masked_lm")(episodes)
    assert set(batch) == {"edit", "update", "retain"}
    for part, rows in (("edit", 4), ("update", 4), ("retain", 6)):
        examples = [example for episode in episodes for example in episode[part]]
        assert batch[part]["input_ids"].shape[0] == rows
        assert batch[part]["lang_ids"].dtype == torch.long
        assert batch[part]["lang_ids"].tolist() == [example["lang_id"] for example in examples]
        for row, example in enumerate(examples):
            labels = batch[part]["labels"][row]
            assert labels[labels != IGNORE_INDEX].tolist() == target_token_ids(tok, example["target"])
            assert ((labels != IGNORE_INDEX) == (batch[part]["input_ids"][row] == tok.mask_token_id)).all()


def test_collator_seq_cls_and_causal_lm(items):
    label2id = {name: i for i, name in enumerate(XNLI_LABELS)}
    xnli = EpisodeDataset([i for i in items if i["source"] == "xnli"], ["en", "fr"], n_retain=2, num_episodes=2)
    batch = EpisodeCollator(build_wordpiece_tokenizer(), "seq_cls", label2id=label2id)([xnli[0], xnli[1]])
    assert batch["update"]["labels"].tolist() == [label2id[xnli[i]["update"][0]["target"]] for i in range(2)]
    assert batch["retain"]["labels"].shape == (4,) and "token_type_ids" in batch["retain"]
    tok = build_byte_bpe_tokenizer()
    facts = EpisodeDataset(_fact_items(items), LANGUAGES, n_retain=2, num_episodes=3)
    batch = EpisodeCollator(tok, "causal_lm")([facts[0], facts[1], facts[2]])
    update = facts[0]["update"][0]
    labels = batch["update"]["labels"][0]
    assert labels[labels != IGNORE_INDEX].tolist() == target_token_ids(tok, update["target"])
    assert batch["retain"]["input_ids"].shape[0] == 6


def test_collator_names_the_item_that_fails(items):
    broken = [dict(item) for item in _fact_items(items)]
    broken = [{**item, "prompts": [p.replace("[Y]", "Paris") for p in item["prompts"]]} for item in broken]
    dataset = EpisodeDataset(broken, LANGUAGES, n_retain=2, num_episodes=1)
    with pytest.raises(ValueError, match=dataset[0]["edit"][0]["item_id"]):
        EpisodeCollator(build_wordpiece_tokenizer(), "masked_lm")([dataset[0]])
    with pytest.raises(ValueError, match="allowed tasks"):
        EpisodeCollator(build_wordpiece_tokenizer(), "mlm")


def test_collator_works_with_a_dataloader(items):
    dataset = EpisodeDataset(_fact_items(items), LANGUAGES, n_retain=2, num_episodes=6)
    collator = EpisodeCollator(build_wordpiece_tokenizer(), "masked_lm")
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False, collate_fn=collator)
    batches = list(loader)
    assert len(batches) == 2
    assert [b["edit"]["input_ids"].shape[0] for b in batches] == [3, 3]
    assert [b["retain"]["lang_ids"].shape[0] for b in batches] == [6, 6]
