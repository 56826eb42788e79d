"""The common schema of parallel items, shared by every data source (mLAMA, XNLI, CLDR facts).

Every loader returns `datasets.Dataset` objects with exactly the columns of `COLUMNS`, in the default
Python format. One row is one item available in several languages; the list columns ``languages``,
``prompts``, ``pairs`` and ``targets`` are aligned position by position, and ``languages`` follows the
order the user asked for (never a set's iteration order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import datasets

from ..languages import check_languages  # noqa: F401  (the one validator, re-exported for the loaders)

COLUMNS = ("id", "source", "relation", "group", "target_id", "languages", "prompts", "pairs", "targets")
LIST_COLUMNS = ("languages", "prompts", "pairs", "targets")
SOURCES = ("mlama", "xnli", "cldr")
DATA_DIR_ENV = "HF_LIME_DATA_DIR"

FEATURES = datasets.Features(
    {
        name: datasets.List(datasets.Value("string")) if name in LIST_COLUMNS else datasets.Value("string")
        for name in COLUMNS
    }
)


class ParallelItem(TypedDict):
    """One parallel item (one row of a loader's dataset).

    Args:
        id (`str`): unique id, e.g. ``"mlama:P19:<uuid>"``, ``"xnli:123"``, ``"cldr:capital:FR"``.
        source (`str`): ``"mlama"``, ``"xnli"`` or ``"cldr"``.
        relation (`str`): mLAMA relation id (``"P19"``), CLDR relation name, or ``"xnli"``.
        group (`str`): the split key: the subject for facts, the premise index for XNLI.
        target_id (`str`): language-independent id of the answer (object URI / ISO code, or XNLI label id).
        languages (`list[str]`): the languages this item has, in the requested order.
        prompts (`list[str]`): per language: the filled template with ``"[Y]"`` kept, or the XNLI premise.
        pairs (`list[str]`): per language: the XNLI hypothesis, ``""`` for facts.
        targets (`list[str]`): per language: the object label, or the XNLI label name.
    """

    id: str
    source: str
    relation: str
    group: str
    target_id: str
    languages: list[str]
    prompts: list[str]
    pairs: list[str]
    targets: list[str]


def items_to_dataset(items: Sequence[ParallelItem]) -> datasets.Dataset:
    """Build a `datasets.Dataset` with the common `FEATURES` from a list of items (possibly empty).

    Args:
        items (`Sequence[ParallelItem]`): the rows, in order.

    Returns:
        `datasets.Dataset`: one row per item, columns `COLUMNS`.
    """
    columns = {name: [item[name] for item in items] for name in COLUMNS}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def _check_row(row: dict, index: int) -> None:
    where = f"row {index} (id {row.get('id')!r})"
    for name in COLUMNS:
        value = row[name]
        if name in LIST_COLUMNS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: column {name!r} must be a list of strings, got {value!r}.")
        elif not isinstance(value, str) or not value:
            raise ValueError(f"{where}: column {name!r} must be a non-empty string, got {value!r}.")
    if row["source"] not in SOURCES:
        raise ValueError(f"{where}: source {row['source']!r} is not one of {SOURCES}.")
    languages = row["languages"]
    if not languages:
        raise ValueError(f"{where}: the item has no languages.")
    if len(set(languages)) != len(languages):
        raise ValueError(f"{where}: duplicate languages {languages}.")
    lengths = {name: len(row[name]) for name in LIST_COLUMNS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: list columns are not aligned with `languages`: lengths {lengths}.")


def validate_items(ds: datasets.Dataset) -> None:
    """Check that a dataset follows the common schema; raise `ValueError` naming the first problem.

    Checks: exactly the columns of `COLUMNS`, string / list-of-string types, a known ``source``, at least
    one language and no duplicate language per row, list columns aligned with ``languages``, unique ids.

    Args:
        ds (`datasets.Dataset`): a loader's output (one split).
    """
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"validate_items expects a datasets.Dataset, got {type(ds).__name__}.")
    if tuple(ds.column_names) != COLUMNS:
        raise ValueError(f"Columns must be exactly {COLUMNS}, got {tuple(ds.column_names)}.")
    seen: set[str] = set()
    for index, row in enumerate(ds):
        _check_row(row, index)
        if row["id"] in seen:
            raise ValueError(f"row {index}: duplicate id {row['id']!r}.")
        seen.add(row["id"])


def default_data_dir() -> Path:
    """The shared data folder: ``$HF_LIME_DATA_DIR`` if set, else ``<repo>/../shared/data``.

    Returns:
        `pathlib.Path`: the folder (it may not exist; loaders raise a clear error if so).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"
