"""mLAMA (Kassner et al., EACL 2021) facts as parallel items.

Release layout read (by path, never copied; the data is CC BY-NC-SA 4.0)::

    <data_dir>/mlama1.1/<lang>/<relation>.jsonl   one fact per line: sub_uri, obj_uri, sub_label, obj_label,
                                                  lineid, uuid (the same uuid for the same fact in every language)
    <data_dir>/mlama1.1/<lang>/templates.jsonl    one line per relation: {"relation": "P19", "template": "[X] ... [Y]"}
    <data_dir>/TREx_multilingual_objects/<lang>.json   optional: per relation, candidate "subjects" and "objects"

Facts are aligned across languages by ``uuid``; by default only facts present in every requested language
are kept. Splits are by subject (``sub_uri``): a subject is in exactly one split.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import datasets

from ..jsonl import iter_jsonl_objects
from .names import names_language
from .schema import ParallelItem, check_languages, default_data_dir, items_to_dataset
from .splits import check_split_sizes, split_by_group

MLAMA_DIRNAME = "mlama1.1"
CANDIDATES_DIRNAME = "TREx_multilingual_objects"
TEMPLATES_FILENAME = "templates.jsonl"
FACT_FIELDS = ("sub_uri", "obj_uri", "sub_label", "obj_label", "uuid")


def _relation_key(relation: str) -> tuple[float, str]:
    """Natural order of relation ids: P17 < P19 < P101."""
    digits = relation[1:]
    return (int(digits) if digits.isdigit() else math.inf, relation)


def mlama_root(data_dir: str | Path | None = None) -> Path:
    """The ``mlama1.1`` folder: ``<data_dir>/mlama1.1``, or `data_dir` itself if it holds language folders.

    Args:
        data_dir (`str` or `Path`, *optional*): the folder containing ``mlama1.1/`` (defaults to
            `default_data_dir()`), or the ``mlama1.1`` folder itself.

    Returns:
        `pathlib.Path`: the release root whose sub-folders are languages.
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if (base / MLAMA_DIRNAME).is_dir():
        return base / MLAMA_DIRNAME
    if base.is_dir() and any(base.glob(f"*/{TEMPLATES_FILENAME}")):
        return base
    raise ValueError(
        f"No mLAMA data at {base}: expected a folder {base / MLAMA_DIRNAME} holding <lang>/{TEMPLATES_FILENAME} "
        "and <lang>/<relation>.jsonl files (the mLAMA 1.1 release layout)."
    )


def mlama_languages(data_dir: str | Path | None = None) -> list[str]:
    """The languages of an mLAMA release (folders with a ``templates.jsonl``), sorted.

    Args:
        data_dir (`str` or `Path`, *optional*): see `mlama_root`.

    Returns:
        `list[str]`: language codes.
    """
    root = mlama_root(data_dir)
    return sorted(p.parent.name for p in root.glob(f"*/{TEMPLATES_FILENAME}"))


def _read_templates(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ValueError(f"Missing mLAMA templates file {path}.")
    templates = {}
    for number, record in iter_jsonl_objects(path):
        relation, template = record.get("relation"), record.get("template")
        if not isinstance(relation, str) or not isinstance(template, str):
            raise ValueError(f"{path}, line {number}: expected string fields 'relation' and 'template'.")
        if "[X]" not in template or "[Y]" not in template:
            raise ValueError(f"{path}, line {number}: template {template!r} must contain '[X]' and '[Y]'.")
        templates[relation] = template
    return templates


def _relation_files(lang_dir: Path) -> dict[str, Path]:
    """Non-empty ``<relation>.jsonl`` files of one language (empty files mean the relation is missing)."""
    return {p.stem: p for p in lang_dir.glob("*.jsonl") if p.name != TEMPLATES_FILENAME and p.stat().st_size > 0}


def _read_facts(path: Path) -> dict[str, dict]:
    """uuid -> fact record of one relation file, fields checked."""
    facts = {}
    for number, record in iter_jsonl_objects(path):
        missing = [f for f in FACT_FIELDS if not isinstance(record.get(f), str) or not record.get(f)]
        if missing:
            raise ValueError(f"{path}, line {number}: missing or empty string fields {missing}.")
        if record["uuid"] in facts:
            raise ValueError(f"{path}, line {number}: duplicate uuid {record['uuid']!r}.")
        facts[record["uuid"]] = record
    return facts


def _check_relations(relations: Sequence[str] | None, available: list[str]) -> list[str]:
    if relations is None:
        return available
    if isinstance(relations, str):
        raise TypeError(f"relations must be a list of relation ids, not the string {relations!r}.")
    relations = list(relations)
    if not relations or len(set(relations)) != len(relations):
        raise ValueError(f"relations must be a non-empty list without duplicates, got {relations}.")
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise ValueError(f"Unknown mLAMA relations {unknown}; available for these languages: {available}.")
    return relations


def _load_language(root: Path, lang: str, relations: list[str]) -> tuple[dict[str, str], dict[str, dict]]:
    """Templates and per-relation facts ({relation: {uuid: record}}) of one language."""
    lang_dir = root / lang
    templates = _read_templates(lang_dir / TEMPLATES_FILENAME)
    files = _relation_files(lang_dir)
    facts = {}
    for relation in relations:
        if relation not in files:
            continue
        if relation not in templates:
            raise ValueError(f"{lang_dir / TEMPLATES_FILENAME} has no template for relation {relation!r}.")
        facts[relation] = _read_facts(files[relation])
    if not any(facts.values()):
        raise ValueError(f"Language {lang!r} has no mLAMA facts for relations {relations} in {lang_dir}.")
    return templates, facts


def _fact_item(
    relation: str, uuid: str, records: dict[str, dict], templates: dict[str, dict], label_language: str | None = None
) -> ParallelItem:
    """One item from the records of the same fact (same uuid) in several languages (dict in request order); with
    `label_language`, that language's subject and object labels fill every language's template."""
    first = next(iter(records.values()))
    for lang, record in records.items():
        if (record["sub_uri"], record["obj_uri"]) != (first["sub_uri"], first["obj_uri"]):
            raise ValueError(
                f"Fact {uuid!r} of {relation} is not parallel: language {lang!r} has "
                f"({record['sub_uri']}, {record['obj_uri']}), others ({first['sub_uri']}, {first['obj_uri']})."
            )
    languages = list(records)
    labels = {lang: records[label_language or lang] for lang in languages}
    return ParallelItem(
        id=f"mlama:{relation}:{uuid}",
        source="mlama",
        relation=relation,
        group=first["sub_uri"],
        target_id=first["obj_uri"],
        languages=languages,
        prompts=[templates[lang][relation].replace("[X]", labels[lang]["sub_label"]) for lang in languages],
        pairs=["" for _ in languages],
        targets=[labels[lang]["obj_label"] for lang in languages],
    )


def _order_key(record: dict) -> tuple[float, str]:
    lineid = record.get("lineid")
    return (lineid if isinstance(lineid, int) and not isinstance(lineid, bool) else math.inf, record["uuid"])


def _relation_items(
    relation: str,
    per_lang: dict[str, dict[str, dict]],
    templates: dict,
    min_languages: int,
    label_language: str | None = None,
) -> list[ParallelItem]:
    """Aligned items of one relation, ordered by (lineid, uuid) (with `label_language`: those that have it)."""
    by_uuid: dict[str, dict[str, dict]] = {}
    for lang, facts in per_lang.items():  # request order
        for uuid, record in facts.items():
            by_uuid.setdefault(uuid, {})[lang] = record
    kept = [(uuid, records) for uuid, records in by_uuid.items()
            if len(records) >= min_languages and (label_language is None or label_language in records)]  # fmt: skip
    kept.sort(key=lambda pair: _order_key(next(iter(pair[1].values()))))
    return [_fact_item(relation, uuid, records, templates, label_language) for uuid, records in kept]


def _cap(items: list[ParallelItem], relation: str, max_per_relation: int | None, seed: int) -> list[ParallelItem]:
    """A seeded sample of at most `max_per_relation` items, in their original order."""
    if max_per_relation is None or len(items) <= max_per_relation:
        return items
    chosen = random.Random(f"{seed}/{relation}").sample(range(len(items)), max_per_relation)
    return [items[i] for i in sorted(chosen)]


def _check_counts(languages: list[str], min_languages: int | None, max_per_relation: int | None) -> int:
    if min_languages is None:
        min_languages = len(languages)
    if not isinstance(min_languages, int) or not 1 <= min_languages <= len(languages):
        raise ValueError(f"min_languages must be an int in [1, {len(languages)}], got {min_languages!r}.")
    if max_per_relation is not None and (not isinstance(max_per_relation, int) or max_per_relation < 1):
        raise ValueError(f"max_per_relation must be a positive int or None, got {max_per_relation!r}.")
    return min_languages


def load_mlama_items(
    data_dir: str | Path | None,
    languages: Sequence[str],
    relations: Sequence[str] | None = None,
    max_per_relation: int | None = None,
    min_languages: int | None = None,
    seed: int = 0,
    label_language: str | None = None,
) -> datasets.Dataset:
    """All aligned mLAMA items as one `datasets.Dataset` (no split). Arguments as in `load_mlama`."""
    languages = check_languages(languages)
    label_language = names_language(label_language, languages)
    min_languages = _check_counts(languages, min_languages, max_per_relation)
    root = mlama_root(data_dir)
    available = mlama_languages(root)
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ValueError(f"Unknown mLAMA languages {unknown} in {root}; available: {available}.")
    union = sorted({r for lang in languages for r in _relation_files(root / lang)}, key=_relation_key)
    relations = _check_relations(relations, union)
    templates, facts = {}, {}
    for lang in languages:
        templates[lang], facts[lang] = _load_language(root, lang, relations)
    items: list[ParallelItem] = []
    for relation in relations:
        per_lang = {lang: facts[lang][relation] for lang in languages if relation in facts[lang]}
        aligned = _relation_items(relation, per_lang, templates, min_languages, label_language)
        items.extend(_cap(aligned, relation, max_per_relation, seed))
    if not items:
        raise ValueError(
            f"No mLAMA fact of relations {relations} is present in at least {min_languages} of {languages}; "
            "lower min_languages or choose other languages/relations."
        )
    return items_to_dataset(items)


def load_mlama(
    data_dir: str | Path | None,
    languages: Sequence[str],
    relations: Sequence[str] | None = None,
    max_per_relation: int | None = None,
    min_languages: int | None = None,
    seed: int = 0,
    split_sizes: Sequence[float] = (0.8, 0.1, 0.1),
    label_language: str | None = None,
) -> datasets.DatasetDict:
    """Load mLAMA facts as parallel items split by subject into train / validation / test.

    Each item is one fact (one ``uuid``); per language its prompt is that language's template with ``[X]``
    replaced by the subject label and ``[Y]`` kept literally, and its target is the object label.

    Args:
        data_dir (`str` or `Path`, *optional*): the folder containing ``mlama1.1/`` (e.g. ``../shared/data``),
            or the ``mlama1.1`` folder itself; `None` means `default_data_dir()`.
        languages (`Sequence[str]`): language codes; the item columns follow this order.
        relations (`Sequence[str]`, *optional*): relation ids such as ``"P19"``; defaults to every relation
            with facts in at least one requested language.
        max_per_relation (`int`, *optional*): keep at most this many facts per relation (a seeded sample,
            taken before splitting).
        min_languages (`int`, *optional*): keep facts present in at least this many requested languages;
            defaults to all of them (an item then has every requested language).
        seed (`int`, *optional*, defaults to `0`): seed of the per-relation cap and of the subject split.
        split_sizes (`Sequence[float]`, *optional*, defaults to `(0.8, 0.1, 0.1)`): fractions of the subjects.
        label_language (`str`, *optional*, defaults to `"own"`): whose labels fill the templates (see
            `hf_lime.data.names`). `"own"` (or `None`): each language's own subject and object labels. One of
            `languages`: that language's labels in every template (translated templates, untranslated labels; the
            LiME reference's protocol when it is the editing language). `"editing"` needs one dataset per editing
            language (load each with `label_language=<language>`).

    Returns:
        `datasets.DatasetDict`: ``train``, ``validation`` and ``test`` with the columns of
        `hf_lime.data.schema.COLUMNS`.

    Example:

    ```python
    >>> from hf_lime.data import load_mlama
    >>> splits = load_mlama("../shared/data", ["en", "fr", "zh"], relations=["P19", "P36"])  # doctest: +SKIP
    >>> splits["train"][0]["prompts"]  # doctest: +SKIP
    ['Anthony Barber was born in [Y] .', 'Anthony Barber est né en [Y].', '安東尼·巴柏出生于[Y]。']

    ```
    """
    check_split_sizes(split_sizes)
    ds = load_mlama_items(data_dir, languages, relations, max_per_relation, min_languages, seed, label_language)
    return split_by_group(ds, split_sizes, seed)


def load_mlama_candidates(data_dir: str | Path | None, language: str) -> dict[str, list[str]]:
    """Candidate object labels per relation for one language, from ``TREx_multilingual_objects/<lang>.json``.

    Args:
        data_dir (`str` or `Path`, *optional*): as in `load_mlama`.
        language (`str`): one language code.

    Returns:
        `dict[str, list[str]]`: relation id -> the relation's candidate objects in that language.
    """
    folder = mlama_root(data_dir).parent / CANDIDATES_DIRNAME
    if not folder.is_dir():
        raise ValueError(f"No candidate objects at {folder}: expected {CANDIDATES_DIRNAME}/<lang>.json files.")
    path = folder / f"{language}.json"
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.json"))
        raise ValueError(f"No candidate objects for language {language!r} in {folder}; available: {available}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: malformed JSON ({error.msg}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping relation ids to {{'objects': [...]}}.")
    candidates = {}
    for relation in sorted(data, key=_relation_key):
        objects = data[relation].get("objects") if isinstance(data[relation], dict) else None
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise ValueError(f"{path}: relation {relation!r} has no list of strings under 'objects'.")
        candidates[relation] = list(objects)
    return candidates
