"""The `"editing"` names protocol: each editing language's own dataset, one evaluation of every edit language.

Under the LiME reference's default (`use_translated_labels: False`) an edit made in `l_e` is scored on every
language's template filled with the names of `l_e`, so the items depend on the editing language (see
`hf_lime.data.names`). `evaluate_editing_protocol` takes one dataset per editing language (the same facts under
the same ids, e.g. `load_mlama(..., label_language=l_e)` for each `l_e`), evaluates the edits made in `l_e` on the
dataset of `l_e`, and scores all of them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import compute_xl_edit_metrics
from .harness import RECORD_FIELDS, evaluate_editor
from .report import EvaluationResult


def _merge(parts: list[EvaluationResult], bootstrap: int, seed: int) -> EvaluationResult:
    records = {field: [value for part in parts for value in part.records[field]] for field in RECORD_FIELDS}
    metrics = compute_xl_edit_metrics(**records, bootstrap=bootstrap, seed=seed)
    settings = dict(parts[0].settings)
    settings["edit_languages"] = [lang for part in parts for lang in part.settings["edit_languages"]]
    settings["edits_per_language"] = {k: v for part in parts for k, v in part.settings["edits_per_language"].items()}
    settings["n_facts"] = len(set(records["group_ids"]))
    floors = [part.settings["pre_edit_floor"] for part in parts]
    settings["pre_edit_floor_by_edit_language"] = dict(zip(settings["edit_languages"], floors, strict=True))
    settings.pop("pre_edit_floor", None)
    return EvaluationResult(metrics=metrics, settings=settings, records=records)


def evaluate_editing_protocol(
    model: Any,
    tokenizer: Any,
    items_by_language: Mapping[str, Any],
    task: str,
    languages: Sequence[str] | None = None,
    eval_languages: Sequence[str] | None = None,
    distinct_facts: bool = False,
    seed: int = 0,
    bootstrap: int = 0,
    return_records: bool = False,
    **kwargs: Any,
) -> EvaluationResult:
    """`evaluate_editor` under the `"editing"` names protocol: the edits made in `l_e` on the items of `l_e`.

    Args:
        model, tokenizer, task, languages, eval_languages, seed, bootstrap: As in `evaluate_editor`.
        items_by_language (`Mapping[str, datasets.Dataset | Sequence[Mapping]]`): Editing language -> its items (every
            template filled with that language's names); the keys are the editing languages. The same fact must
            have the same id in every dataset.
        distinct_facts (`bool`, *optional*, defaults to `False`): As in `evaluate_editor`: `True` gives each editing
            language its own facts (those edited in an earlier language are excluded).
        return_records (`bool`, *optional*, defaults to `False`): Keep the merged records.
        **kwargs: Any other argument of `evaluate_editor` (`n_edits`, `n_retain`, `n_neighbours`, `scoring`,
            `extra_scorings`, `candidates`, ...).

    Returns:
        [`EvaluationResult`]: the metrics of all the edits together (intervals resample the facts); `settings`
        gains `label_language="editing"` and each editing language's pre-edit floor; `readings` as the headline.

    Raises:
        ValueError: On an empty mapping, a key that is not an evaluated language, and whatever `evaluate_editor`
            raises.
    """
    if not isinstance(items_by_language, Mapping) or not items_by_language:
        raise ValueError("`items_by_language` must map each editing language to its items (one dataset per language).")
    for forbidden in ("edit_languages", "items", "group_ids", "exclude_ids"):
        if forbidden in kwargs:
            raise ValueError(f"`{forbidden}` is set by evaluate_editing_protocol; the editing languages are the keys.")
    parts: list[EvaluationResult] = []
    used: set[str] = set()
    for language, items in items_by_language.items():
        part = evaluate_editor(model, tokenizer, items, task, languages=languages, edit_languages=[language],
                               eval_languages=eval_languages, distinct_facts=distinct_facts, seed=seed,
                               bootstrap=0, return_records=True, exclude_ids=used if distinct_facts else (),
                               **kwargs)  # fmt: skip
        if distinct_facts:
            used.update(part.records["group_ids"])
        parts.append(part)
    result = _merge(parts, bootstrap, seed)
    result.settings["label_language"] = "editing"
    names = list(parts[0].readings)
    result.readings = {name: _merge([part.readings[name] for part in parts], bootstrap, seed) for name in names}
    if not return_records:
        result.records = None
        for reading in result.readings.values():
            reading.records = None
    return result
