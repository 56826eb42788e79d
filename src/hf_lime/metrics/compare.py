"""Paired comparison of two runs evaluated on the same edits: each metric's difference with a grouped bootstrap
interval.

Two configurations (say LiME masks on and off) edited the same facts, in the same languages, scored against the same
references. Their difference is estimated on the same resampled groups of edits in every bootstrap replicate, so
the interval reflects the variation between facts once, not twice (as two independent intervals would).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .xl_edit import (
    REPLICATED_NAMES,
    _group_of_edit,
    _percentiles,
    _replicates,
    _summaries,
    _tables,
    _validate_bootstrap_options,
    _validate_records,
)

RECORD_COLUMNS = ("predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds")


def _records(run: Mapping[str, Sequence[str]], name: str):
    missing = [column for column in RECORD_COLUMNS if column not in run]
    if missing:
        raise ValueError(f"Run {name!r} lacks the record columns {missing}; it needs {list(RECORD_COLUMNS)}.")
    return _validate_records(**{column: run[column] for column in RECORD_COLUMNS})


def _scored_keys(records) -> list[tuple[str, str, str, str, str]]:
    """What each record scores (edit, its language, evaluation language, kind, reference), sorted."""
    return sorted(zip(records.edit_ids, records.edit_languages, records.eval_languages, records.kinds,
                      records.references, strict=True))  # fmt: skip


def compare_xl_edit_metrics(
    baseline: Mapping[str, Sequence[str]],
    candidate: Mapping[str, Sequence[str]],
    group_ids: Sequence[str] | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float]]]:
    """
    `candidate − baseline` for every replicated metric, with a paired, grouped bootstrap interval.

    Args:
        baseline (`Mapping[str, list[str]]`): The records of the first run (the inputs of `compute_xl_edit_metrics`:
            `predictions`, `references`, `edit_ids`, `edit_languages`, `eval_languages`, `kinds`), e.g.
            `EvaluationResult.records`.
        candidate (`Mapping[str, list[str]]`): The records of the second run, on the same edits: the same edit ids in
            the same languages, scored in the same evaluation languages against the same references (the order of
            the records may differ).
        group_ids (`list[str]`, *optional*): One per record of `baseline`: the fact each edit was made from. The
            bootstrap resamples these groups; without it, each edit is its own group.
        bootstrap (`int`, *optional*, defaults to `1000`): Resamples (> 0).
        confidence (`float`, *optional*, defaults to `0.95`): Coverage of the percentile intervals.
        seed (`int`, *optional*, defaults to `0`): Seed of the resampling.

    Returns:
        `dict`: for each of `reliability`, `transfer`, `edit_success`, `locality`, `hmean`, `language_gap` and
        `language_std`: `{"baseline": float, "candidate": float, "difference": float, "ci": [low, high]}`.

    Raises:
        ValueError: When the runs were not evaluated on the same edits, or on invalid records or options.

    Example:

    ```python
    >>> from hf_lime.metrics import compare_xl_edit_metrics
    >>> a = {"predictions": ["x", "y", "x", "z"], "references": ["y", "y", "y", "z"], "edit_ids": ["1", "1", "2", "2"],
    ...      "edit_languages": ["en"] * 4, "eval_languages": ["en", "fr", "en", "fr"], "kinds": ["edit"] * 4}
    >>> b = {**a, "predictions": ["y", "y", "y", "z"]}
    >>> result = compare_xl_edit_metrics(a, b, bootstrap=200)
    >>> result["reliability"]["baseline"], result["reliability"]["candidate"], result["reliability"]["difference"]
    (0.0, 1.0, 1.0)

    ```
    """
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 1:
        raise ValueError(f"`bootstrap` must be an int >= 1 for a paired comparison, got {bootstrap!r}.")
    _validate_bootstrap_options(bootstrap, confidence, seed)
    first, second = _records(baseline, "baseline"), _records(candidate, "candidate")
    if _scored_keys(first) != _scored_keys(second):
        raise ValueError(
            "The two runs were not evaluated on the same edits (edit ids, languages, kinds and references differ): "
            "a paired comparison needs the same edits in both, e.g. the same items, seed and n_edits."
        )
    edit_index = {edit_id: i for i, edit_id in enumerate(dict.fromkeys(first.edit_ids))}
    group_of_edit = _group_of_edit(first, edit_index, group_ids)
    tables = [_tables(records, edit_index) for records in (first, second)]
    points = [_summaries(run_tables, np.ones((1, len(edit_index))))[0] for run_tables in tables]
    replicates = _replicates(tables, group_of_edit, int(bootstrap), int(seed))
    result = {}
    for name in REPLICATED_NAMES:
        base, cand = float(points[0][name][0]), float(points[1][name][0])
        difference = replicates[1][name] - replicates[0][name]
        result[name] = {
            "baseline": base,
            "candidate": cand,
            "difference": cand - base,
            "ci": _percentiles(difference, float(confidence)),
        }
    return result
