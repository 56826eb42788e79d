"""XNLI (Conneau et al., EMNLP 2018) rows as parallel items.

Two sources, one schema:

- local files (read by path, never copied; the data is CC BY-NC 4.0): ``<data_dir>/xnli/dev-<lang>.tsv``,
  ``premise<TAB>hypothesis<TAB>label`` with no header and string labels, line-aligned across languages
  (row ``i`` is the same pair in every language), 3 rows per premise;
- the Hugging Face Hub dataset ``facebook/xnli``, configuration ``all_languages``.

Labels follow the Hub dataset's class ids: ``0`` entailment, ``1`` neutral, ``2`` contradiction. Splits are
by premise: the three hypotheses of a premise are always in the same split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from .schema import ParallelItem, check_languages, default_data_dir, items_to_dataset
from .splits import check_split_sizes, split_by_group

XNLI_DIRNAME = "xnli"
XNLI_LABELS = ("entailment", "neutral", "contradiction")
ROWS_PER_PREMISE = 3
HUB_DATASET = "facebook/xnli"
HUB_CONFIG = "all_languages"
XNLI_HUB_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
_HEADER_LABELS = ("label", "gold_label")


def xnli_root(data_dir: str | Path | None = None) -> Path:
    """The folder of the ``dev-<lang>.tsv`` files: ``<data_dir>/xnli`` or `data_dir` itself.

    Args:
        data_dir (`str` or `Path`, *optional*): the folder containing ``xnli/`` (defaults to
            `default_data_dir()`), or the ``xnli`` folder itself.

    Returns:
        `pathlib.Path`: the folder.
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if (base / XNLI_DIRNAME).is_dir():
        return base / XNLI_DIRNAME
    if base.is_dir() and any(base.glob("dev-*.tsv")):
        return base
    raise ValueError(
        f"No XNLI data at {base}: expected a folder {base / XNLI_DIRNAME} holding dev-<lang>.tsv files "
        "(premise<TAB>hypothesis<TAB>label, line-aligned across languages)."
    )


def xnli_languages(data_dir: str | Path | None = None) -> list[str]:
    """The languages with a ``dev-<lang>.tsv`` file, sorted.

    Args:
        data_dir (`str` or `Path`, *optional*): see `xnli_root`.

    Returns:
        `list[str]`: language codes.
    """
    return sorted(p.name[len("dev-") : -len(".tsv")] for p in xnli_root(data_dir).glob("dev-*.tsv"))


def _label_id(label: str) -> int | None:
    """0/1/2 from a label name or a digit; None if neither."""
    label = label.strip()
    if label in XNLI_LABELS:
        return XNLI_LABELS.index(label)
    if label in ("0", "1", "2"):
        return int(label)
    return None


def read_xnli_tsv(path: str | Path) -> list[tuple[str, str, int]]:
    """Read one XNLI tsv file into ``(premise, hypothesis, label_id)`` rows.

    A first line whose label column is ``label`` or ``gold_label`` is taken as a header and skipped.

    Args:
        path (`str` or `Path`): a ``premise<TAB>hypothesis<TAB>label`` file.

    Returns:
        `list[tuple[str, str, int]]`: the rows in file order.
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if number == 1 and len(fields) == 3 and fields[2].strip() in _HEADER_LABELS:
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}, line {number}: expected 3 tab-separated fields, got {len(fields)}.")
            label = _label_id(fields[2])
            if label is None:
                raise ValueError(
                    f"{path}, line {number}: unknown label {fields[2]!r}; allowed: {XNLI_LABELS} or 0/1/2."
                )
            rows.append((fields[0], fields[1], label))
    if not rows:
        raise ValueError(f"{path} holds no XNLI rows.")
    return rows


def _read_parallel(root: Path, languages: list[str]) -> dict[str, list[tuple[str, str, int]]]:
    """Rows of every language, checked to be line-aligned (same count, same label per row)."""
    rows = {lang: read_xnli_tsv(root / f"dev-{lang}.tsv") for lang in languages}
    first = languages[0]
    for lang in languages[1:]:
        if len(rows[lang]) != len(rows[first]):
            raise ValueError(
                f"XNLI files are not line-aligned: dev-{lang}.tsv has {len(rows[lang])} rows, "
                f"dev-{first}.tsv has {len(rows[first])}."
            )
        for index, (a, b) in enumerate(zip(rows[first], rows[lang], strict=True)):
            if a[2] != b[2]:
                raise ValueError(
                    f"XNLI row {index} has label {XNLI_LABELS[a[2]]!r} in dev-{first}.tsv but "
                    f"{XNLI_LABELS[b[2]]!r} in dev-{lang}.tsv: the files are not line-aligned."
                )
    return rows


def _xnli_item(
    index: int, group: str, label: int, premises: list[str], hypotheses: list[str], languages: list[str]
) -> ParallelItem:
    return ParallelItem(
        id=f"xnli:{index}",
        source="xnli",
        relation="xnli",
        group=group,
        target_id=str(label),
        languages=list(languages),
        prompts=premises,
        pairs=hypotheses,
        targets=[XNLI_LABELS[label]] * len(languages),
    )


def _cap_rows(groups: list[str], max_items: int | None, seed: int) -> list[int]:
    """Indices of at most `max_items` rows, taken premise by premise in a seeded order, then sorted."""
    if max_items is None:
        return list(range(len(groups)))
    if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
        raise ValueError(f"max_items must be a positive int or None, got {max_items!r}.")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    chosen = [index for group in order for index in members[group]][:max_items]
    return sorted(chosen)


def load_xnli(
    data_dir: str | Path | None,
    languages: Sequence[str],
    seed: int = 0,
    split_sizes: Sequence[float] = (0.8, 0.1, 0.1),
    max_items: int | None = None,
) -> datasets.DatasetDict:
    """Load local XNLI files as parallel items split by premise into train / validation / test.

    Item ``i`` is row ``i`` of every ``dev-<lang>.tsv``; its group is the premise index ``i // 3``.

    Args:
        data_dir (`str` or `Path`, *optional*): the folder containing ``xnli/`` (e.g. ``../shared/data``),
            or the ``xnli`` folder itself; `None` means `default_data_dir()`.
        languages (`Sequence[str]`): language codes; the item columns follow this order.
        seed (`int`, *optional*, defaults to `0`): seed of the premise split and of the `max_items` sample.
        split_sizes (`Sequence[float]`, *optional*, defaults to `(0.8, 0.1, 0.1)`): fractions of the premises.
        max_items (`int`, *optional*): keep at most this many rows, taking whole premises in a seeded order.

    Returns:
        `datasets.DatasetDict`: ``train``, ``validation``, ``test`` with the columns of
        `hf_lime.data.schema.COLUMNS`.

    Example:

    ```python
    >>> from hf_lime.data import load_xnli
    >>> splits = load_xnli("../shared/data", ["en", "zh"])  # doctest: +SKIP
    >>> splits["train"][0]["targets"]  # doctest: +SKIP
    ['neutral', 'neutral']

    ```
    """
    languages = check_languages(languages)
    check_split_sizes(split_sizes)
    root = xnli_root(data_dir)
    available = xnli_languages(root)
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ValueError(f"Unknown XNLI languages {unknown} in {root}; available: {available}.")
    rows = _read_parallel(root, languages)
    n_rows = len(rows[languages[0]])
    groups = [str(index // ROWS_PER_PREMISE) for index in range(n_rows)]
    items = [
        _xnli_item(
            index,
            groups[index],
            rows[languages[0]][index][2],
            [rows[lang][index][0] for lang in languages],
            [rows[lang][index][1] for lang in languages],
            languages,
        )
        for index in _cap_rows(groups, max_items, seed)
    ]
    return split_by_group(items_to_dataset(items), split_sizes, seed)


def xnli_hub_record_to_item(
    record: Mapping[str, Any], index: int, group: str, languages: Sequence[str]
) -> ParallelItem:
    """Convert one record of the Hub's ``xnli/all_languages`` into a `ParallelItem`.

    Args:
        record (`Mapping`): with ``premise`` a dict language -> text, ``hypothesis`` a dict with parallel
            lists ``language`` and ``translation``, and ``label`` an int in 0..2.
        index (`int`): the row index, used in the id ``"xnli:<index>"``.
        group (`str`): the premise group key.
        languages (`Sequence[str]`): the languages to keep, in this order.

    Returns:
        `ParallelItem`: the item.
    """
    premise, hypothesis, label = record["premise"], record["hypothesis"], record["label"]
    hyp = dict(zip(hypothesis["language"], hypothesis["translation"], strict=True))
    missing = [lang for lang in languages if lang not in premise or lang not in hyp]
    if missing:
        raise ValueError(f"XNLI record {index} lacks languages {missing}; it has {sorted(premise)}.")
    if label not in (0, 1, 2):
        raise ValueError(f"XNLI record {index} has label {label!r}; expected 0, 1 or 2 (unlabelled rows are -1).")
    return _xnli_item(
        index, group, label, [premise[lang] for lang in languages], [hyp[lang] for lang in languages], languages
    )


def _premise_groups(premises: Sequence[Mapping[str, str]]) -> list[str]:
    """Group key per row: the index of the first row with the same premise (all its translations)."""
    first_seen: dict[tuple, str] = {}
    return [first_seen.setdefault(tuple(sorted(p.items())), str(len(first_seen))) for p in premises]


def xnli_hub_to_items(records: Sequence[Mapping[str, Any]], languages: Sequence[str]) -> list[ParallelItem]:
    """Convert Hub records into items, grouping rows that share a premise (all its translations).

    Args:
        records (`Sequence[Mapping]`): rows of ``xnli/all_languages`` (a `datasets.Dataset` works).
        languages (`Sequence[str]`): the languages to keep, in this order.

    Returns:
        `list[ParallelItem]`: one item per record, ``group`` = index of the premise's first occurrence.
    """
    languages = check_languages(languages)
    records = list(records)
    groups = _premise_groups([record["premise"] for record in records])
    return [xnli_hub_record_to_item(r, i, groups[i], languages) for i, r in enumerate(records)]


def load_xnli_from_hub(
    languages: Sequence[str],
    split: str = "validation",
    seed: int = 0,
    split_sizes: Sequence[float] = (0.8, 0.1, 0.1),
    max_items: int | None = None,
    path: str = HUB_DATASET,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load XNLI from the Hugging Face Hub (``all_languages`` configuration) as parallel items.

    Needs network access or a populated `datasets` cache. The rows of Hub split `split` are re-split by
    premise into train / validation / test like `load_xnli`.

    Args:
        languages (`Sequence[str]`): language codes among the 15 XNLI languages, in the wanted order.
        split (`str`, *optional*, defaults to `"validation"`): the Hub split to read (``train``,
            ``validation`` or ``test``).
        seed (`int`, *optional*, defaults to `0`): seed of the premise split and of the `max_items` sample.
        split_sizes (`Sequence[float]`, *optional*, defaults to `(0.8, 0.1, 0.1)`): fractions of the premises.
        max_items (`int`, *optional*): keep at most this many rows, taking whole premises in a seeded order.
        path (`str`, *optional*, defaults to `"facebook/xnli"`): the Hub dataset id.
        load_kwargs: passed on to `datasets.load_dataset` (e.g. ``cache_dir``, ``revision``).

    Returns:
        `datasets.DatasetDict`: ``train``, ``validation``, ``test`` in the common schema.
    """
    languages = check_languages(languages)
    check_split_sizes(split_sizes)
    unknown = [lang for lang in languages if lang not in XNLI_HUB_LANGUAGES]
    if unknown:
        raise ValueError(f"Unknown XNLI languages {unknown}; the Hub dataset has {XNLI_HUB_LANGUAGES}.")
    hub = datasets.load_dataset(path, HUB_CONFIG, split=split, **load_kwargs)
    groups = _premise_groups(hub["premise"])
    keep = _cap_rows(groups, max_items, seed)
    items = [
        xnli_hub_record_to_item(record, index, groups[index], languages)
        for index, record in zip(keep, hub.select(keep), strict=True)
    ]
    return split_by_group(items_to_dataset(items), split_sizes, seed)
