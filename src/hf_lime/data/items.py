"""Parallel items parsed for episodes and evaluation: one item (a fact or example in several languages) indexed by
language, and the table of each relation's targets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ITEM_KEYS = ("id", "source", "relation", "group", "target_id", "languages", "prompts", "pairs", "targets")


@dataclass(frozen=True)
class ParsedItem:
    """One parallel item, indexed by language."""

    id: str
    relation: str
    group: str
    target_id: str
    positions: dict[str, int]
    prompts: tuple[str, ...]
    pairs: tuple[str, ...]
    targets: tuple[str, ...]

    def example(self, language: str, target: str, lang_id: int) -> dict[str, Any]:
        position = self.positions[language]
        return {
            "prompt": self.prompts[position],
            "pair": self.pairs[position],
            "target": target,
            "language": language,
            "lang_id": lang_id,
            "item_id": self.id,
        }

    def gold_labels(self) -> dict[str, str]:
        return {lang: self.targets[pos] for lang, pos in self.positions.items() if self.targets[pos].strip()}


def parse_item(row: Mapping[str, Any], languages: set[str]) -> ParsedItem:
    missing = [key for key in ITEM_KEYS if key not in row]
    if missing:
        raise ValueError(f"Item {row.get('id')!r} lacks the keys {missing}; items need {list(ITEM_KEYS)}.")
    columns = [list(row[key]) for key in ("languages", "prompts", "pairs", "targets")]
    if len({len(column) for column in columns}) != 1:
        raise ValueError(f"Item {row['id']!r}: languages, prompts, pairs and targets must have the same length.")
    if len(set(columns[0])) != len(columns[0]):
        raise ValueError(f"Item {row['id']!r} lists a language twice: {columns[0]}.")
    # Languages outside `languages` have no mask row: they are ignored.
    positions = {lang: pos for pos, lang in enumerate(columns[0]) if lang in languages}
    return ParsedItem(
        id=str(row["id"]),
        relation=str(row["relation"]),
        group=str(row["group"]),
        target_id=str(row["target_id"]),
        positions=positions,
        prompts=tuple(columns[1]),
        pairs=tuple(columns[2]),
        targets=tuple(columns[3]),
    )


def target_table(items: Iterable[ParsedItem]) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per relation, the sorted list of ``(target_id, {language: label})`` seen in the items."""
    table: dict[str, dict[str, dict[str, str]]] = {}
    for item in items:
        labels = table.setdefault(item.relation, {}).setdefault(item.target_id, {})
        for lang, label in item.gold_labels().items():
            labels.setdefault(lang, label)
    return {relation: sorted(targets.items()) for relation, targets in table.items()}


def fact_pairs(rows: Iterable[Mapping[str, Any]], languages: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Every `(prompt, gold answer)` of masked-LM fact rows (the common schema), in each language (of `languages`,
    when given) where the row has both, the `[Y]` placeholder written as `[MASK]`: facts for
    `LimeEditor.key_moments` (what edits should leave alone)."""
    keep = None if languages is None else set(languages)
    return [
        (prompt.replace("[Y]", "[MASK]"), target)
        for row in rows
        for lang, prompt, target in zip(row["languages"], row["prompts"], row["targets"], strict=True)
        if (keep is None or lang in keep) and prompt and target
    ]
