"""Group-disjoint train / validation / test splits, shared by every loader.

A *group* is what must never straddle two splits: the subject of a fact (so that an edit at test time is
about an entity never seen while training the editor, as in the LiME paper), or the premise of an XNLI
row. Groups, not rows, are shuffled and cut, so split sizes match `split_sizes` in number of groups and
only roughly in number of rows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import datasets

SPLIT_NAMES = ("train", "validation", "test")


def check_split_sizes(split_sizes: Sequence[float]) -> tuple[float, float, float]:
    """Validate train / validation / test fractions.

    Args:
        split_sizes (`Sequence[float]`): three non-negative fractions that sum to 1.

    Returns:
        `tuple[float, float, float]`: the fractions as floats.
    """
    sizes = tuple(split_sizes) if isinstance(split_sizes, (list, tuple)) else None
    if sizes is None or len(sizes) != 3:
        raise ValueError(f"split_sizes must be three fractions (train, validation, test), got {split_sizes!r}.")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in sizes):
        raise TypeError(f"split_sizes must hold numbers, got {split_sizes!r}.")
    if any(s < 0 for s in sizes) or abs(sum(sizes) - 1.0) > 1e-6:
        raise ValueError(f"split_sizes must be non-negative and sum to 1, got {split_sizes!r} (sum {sum(sizes)}).")
    return float(sizes[0]), float(sizes[1]), float(sizes[2])


def assign_groups(groups: Sequence[str], split_sizes: Sequence[float], seed: int) -> dict[str, str]:
    """Deterministically assign each distinct group to one split.

    The distinct groups are sorted, shuffled with `random.Random(seed)` and cut at the cumulative
    fractions, so the result depends only on the set of groups, `split_sizes` and `seed` (not on row
    order nor on Python's hash seed).

    Args:
        groups (`Sequence[str]`): group keys (repeats allowed).
        split_sizes (`Sequence[float]`): train / validation / test fractions of the groups.
        seed (`int`): shuffling seed.

    Returns:
        `dict[str, str]`: group -> split name (one of `SPLIT_NAMES`).
    """
    sizes = check_split_sizes(split_sizes)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    n = len(unique)
    cuts = [0, round(n * sizes[0]), round(n * (sizes[0] + sizes[1])), n]
    return {group: SPLIT_NAMES[k] for k in range(3) for group in unique[cuts[k] : cuts[k + 1]]}


def split_by_group(
    ds: datasets.Dataset,
    split_sizes: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    group_column: str = "group",
) -> datasets.DatasetDict:
    """Split a dataset into train / validation / test so that no group is in two splits.

    Rows keep their original relative order inside each split.

    Args:
        ds (`datasets.Dataset`): the rows to split.
        split_sizes (`Sequence[float]`, *optional*, defaults to `(0.8, 0.1, 0.1)`):
            fractions of the *groups* that go to train, validation and test.
        seed (`int`, *optional*, defaults to `0`): seed of the group shuffle.
        group_column (`str`, *optional*, defaults to `"group"`): the column holding the group keys.

    Returns:
        `datasets.DatasetDict`: with keys ``"train"``, ``"validation"``, ``"test"`` (some may be empty).

    Example:

    ```python
    >>> import datasets
    >>> ds = datasets.Dataset.from_dict({"group": ["a", "a", "b", "c"], "x": [1, 2, 3, 4]})
    >>> splits = split_by_group(ds, (0.5, 0.5, 0.0), seed=0)
    >>> sorted(len(splits[name]) for name in ("train", "validation", "test"))
    [0, 1, 3]

    ```
    """
    if group_column not in ds.column_names:
        raise ValueError(f"group_column {group_column!r} is not a column; columns are {ds.column_names}.")
    groups = ds[group_column]
    assignment = assign_groups(groups, split_sizes, seed)
    indices: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for index, group in enumerate(groups):
        indices[assignment[group]].append(index)
    return datasets.DatasetDict({name: ds.select(indices[name]) for name in SPLIT_NAMES})
