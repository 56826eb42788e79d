"""Cross-lingual edit metrics in plain numpy: edit success (ES) and locality (Loc) per language pair.

An edit made in language `l_e` is scored in every evaluation language `l`. Each scored prediction is one *record*;
records are grouped into cells `(l_e, l)`, each cell is the mean of its records, and the aggregates are means of
cells (so a language pair with many records weighs as much as one with few). Definitions follow the LiME paper
(https://huggingface.co/papers/2205.12677); every output is defined with its formula in `docs/metrics.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

KINDS = ("edit", "retain", "neighbour", "sequence")
"""Allowed values of `kinds`. `"edit"` records score edit success. The other three score locality, each a part of it:
`"neighbour"` a fact of the edited relation about another subject, read at its answer (`locality_same_relation`, the
probes an edit is most likely to reach); `"retain"` another, unrelated fact read at its answer (`locality_other`);
`"sequence"` an unrelated prompt read at every position of the sequence, as the LiME reference reads locality on mLAMA
(`locality_sequence`)."""

LOCALITY_PARTS = {"locality_same_relation": ("neighbour",), "locality_other": ("retain",),
                  "locality_sequence": ("sequence",)}  # fmt: skip
"""Each locality part and the record kinds it reads; `locality` pools `"neighbour"` and `"retain"` records."""

POOLED_LOCALITY_KINDS = ("neighbour", "retain")

SCALAR_METRIC_NAMES = (
    "reliability",
    "transfer",
    "edit_success",
    "locality",
    "hmean",
    "locality_same_relation",
    "locality_other",
    "locality_sequence",
    "hmean_same_relation",
    "language_gap",
    "language_std",
)
"""Float outputs, the ones a trainer logs (a locality part without records is NaN)."""

METRIC_NAMES = SCALAR_METRIC_NAMES + (
    "es_by_language",
    "loc_by_language",
    "es_matrix",
    "loc_matrix",
    "n_edits",
    "n_records",
)
"""Every key of the result of `compute_xl_edit_metrics`, in order (`"ci"` is added only when bootstrapping)."""

CI_METRIC_NAMES = ("reliability", "transfer", "edit_success", "locality", "hmean", "locality_same_relation",
                   "locality_other", "locality_sequence", "hmean_same_relation")  # fmt: skip
"""Outputs that get a bootstrap confidence interval under the `"ci"` key."""

CI_KEY = "ci"

REPLICATED_NAMES = CI_METRIC_NAMES + ("language_gap", "language_std")
"""Outputs recomputed on every bootstrap replicate (the paired comparisons of `compare_xl_edit_metrics` use all)."""

_FIELDS = ("predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds")
_NON_EMPTY_FIELDS = ("edit_ids", "edit_languages", "eval_languages")
_MAX_BOOTSTRAP_CELLS = 4_000_000  # resamples x edits held in memory at once


@dataclass
class _Records:
    """The validated input columns, as lists of str."""

    predictions: list[str]
    references: list[str]
    edit_ids: list[str]
    edit_languages: list[str]
    eval_languages: list[str]
    kinds: list[str]


@dataclass
class _CellTable:
    """Correct and total record counts per edit (rows) and per `(edit language, eval language)` cell (columns)."""

    cells: list[tuple[str, str]]
    correct: np.ndarray
    total: np.ndarray


@dataclass
class _Tables:
    """The cell tables of one run: edit success, pooled locality and each locality part."""

    es: _CellTable
    loc: _CellTable
    parts: dict[str, _CellTable]


def _tables(records: _Records, edit_index: dict[str, int]) -> _Tables:
    parts = {name: _build_table(records, kinds, edit_index) for name, kinds in LOCALITY_PARTS.items()}
    loc = _build_table(records, POOLED_LOCALITY_KINDS, edit_index)
    return _Tables(es=_build_table(records, "edit", edit_index), loc=loc, parts=parts)


def _as_str_list(name: str, column) -> list[str]:
    if hasattr(column, "tolist"):  # numpy arrays, pandas Series
        column = column.tolist()
    if isinstance(column, (str, bytes)) or not isinstance(column, Sequence):
        raise ValueError(f"`{name}` must be a list of str (one per record), got {type(column).__name__}.")
    values = list(column)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(
                f"`{name}[{i}]` is {type(value).__name__} {value!r}; every record value must be a str. Pass class ids "
                "as strings, e.g. str(label); floats are rejected because '1.0' != '1'."
            )
        if value == "" and name in _NON_EMPTY_FIELDS:
            raise ValueError(f"`{name}[{i}]` is an empty string; edit ids and language codes must be non-empty.")
    return values


def _validate_records(**columns) -> _Records:
    values = {name: _as_str_list(name, columns[name]) for name in _FIELDS}
    lengths = {name: len(column) for name, column in values.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"All inputs must have the same length (one entry per record), got {listed}.")
    if lengths["predictions"] == 0:
        raise ValueError("Empty input: at least one record is needed to compute cross-lingual edit metrics.")
    for i, kind in enumerate(values["kinds"]):
        if kind not in KINDS:
            raise ValueError(f"`kinds[{i}]` is {kind!r}; allowed kinds are {KINDS}.")
    records = _Records(**values)
    _check_one_edit_language_per_edit(records)
    return records


def _check_one_edit_language_per_edit(records: _Records) -> None:
    language_of: dict[str, str] = {}
    for edit_id, language in zip(records.edit_ids, records.edit_languages, strict=True):
        known = language_of.setdefault(edit_id, language)
        if known != language:
            raise ValueError(
                f"Edit id {edit_id!r} appears with edit languages {known!r} and {language!r}; an edit is made in one "
                "language, so give each (item, edit language) its own edit id."
            )


def _validate_bootstrap_options(bootstrap: int, confidence: float, seed: int) -> None:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, Integral) or bootstrap < 0:
        raise ValueError(f"`bootstrap` must be an int >= 0 (number of resamples; 0 disables), got {bootstrap!r}.")
    if isinstance(confidence, bool) or not isinstance(confidence, Real) or not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be a float strictly between 0 and 1, got {confidence!r}.")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")


def _build_table(records: _Records, kinds: str | tuple[str, ...], edit_index: dict[str, int]) -> _CellTable:
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    rows = [i for i, record_kind in enumerate(records.kinds) if record_kind in kinds]
    cells = _ordered_cells(records)
    present = {(records.edit_languages[i], records.eval_languages[i]) for i in rows}
    cells = [cell for cell in cells if cell in present]
    cell_index = {cell: j for j, cell in enumerate(cells)}
    edit_rows = np.array([edit_index[records.edit_ids[i]] for i in rows], dtype=np.int64)
    cell_cols = np.array([cell_index[(records.edit_languages[i], records.eval_languages[i])] for i in rows], np.int64)
    hits = np.array([records.predictions[i] == records.references[i] for i in rows], dtype=np.float64)
    correct = np.zeros((len(edit_index), len(cells)))
    total = np.zeros_like(correct)
    np.add.at(correct, (edit_rows, cell_cols), hits)
    np.add.at(total, (edit_rows, cell_cols), 1.0)
    return _CellTable(cells=cells, correct=correct, total=total)


def _ordered_cells(records: _Records) -> list[tuple[str, str]]:
    """All (edit, eval) language pairs, each language in order of first appearance in the records (the order the
    caller evaluated them in, e.g. the adapter's language order), so tables and heatmaps keep that order."""
    order: dict[str, int] = {}
    for language in (*records.edit_languages, *records.eval_languages):
        order.setdefault(language, len(order))
    pairs = set(zip(records.edit_languages, records.eval_languages, strict=True))
    return sorted(pairs, key=lambda cell: (order[cell[0]], order[cell[1]]))


def _cell_means(table: _CellTable, weights: np.ndarray) -> np.ndarray:
    """Cell means under per-edit weights of shape `(replicates, edits)`; NaN where a cell has no records."""
    numerator = weights @ table.correct
    denominator = weights @ table.total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _mean_present(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the columns selected by `mask`, skipping NaN (absent) cells; NaN when none is present."""
    selected = values[:, mask]
    present = ~np.isnan(selected)
    count = present.sum(axis=1)
    total = np.where(present, selected, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def harmonic_mean(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """`2ab / (a + b)`, 0 where `a + b == 0`, NaN where either is NaN (element-wise; floats too)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(a + b > 0, 2 * a * b / (a + b), 0.0)
    return np.where(np.isnan(a) | np.isnan(b), np.nan, value)


def _all_cells(table: _CellTable, weights: np.ndarray) -> np.ndarray:
    return _mean_present(_cell_means(table, weights), np.ones(len(table.cells), dtype=bool))


def _summaries(tables: _Tables, weights: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The `REPLICATED_NAMES` for each weight replicate, and the ES cell means (for the per-language outputs)."""
    es = tables.es
    es_means = _cell_means(es, weights)
    diagonal = np.array([edit == evaluated for edit, evaluated in es.cells], dtype=bool)
    out = {
        "reliability": _mean_present(es_means, diagonal),
        "transfer": _mean_present(es_means, ~diagonal),
        "edit_success": _mean_present(es_means, np.ones_like(diagonal)),
        "locality": _all_cells(tables.loc, weights),
    }
    out["hmean"] = harmonic_mean(out["edit_success"], out["locality"])
    out.update({name: _all_cells(table, weights) for name, table in tables.parts.items()})
    out["hmean_same_relation"] = harmonic_mean(out["edit_success"], out["locality_same_relation"])
    by_language = _by_language_replicates(es.cells, es_means)
    with np.errstate(invalid="ignore"):
        out["language_gap"] = np.nanmax(by_language, axis=1) - np.nanmin(by_language, axis=1)
        out["language_std"] = np.nanstd(by_language, axis=1)
    return out, es_means


def _by_language_replicates(cells: list[tuple[str, str]], means: np.ndarray) -> np.ndarray:
    """`(replicates, eval languages)`: per evaluation language, the mean of its present cells."""
    languages = list(dict.fromkeys(eval_language for _, eval_language in cells))
    if not languages:
        return np.full((means.shape[0], 1), np.nan)
    columns = [_mean_present(means, np.array([lang == ev for _, ev in cells], dtype=bool)) for lang in languages]
    return np.stack(columns, axis=1)


def _matrix(cells: list[tuple[str, str]], means: np.ndarray) -> dict[str, dict[str, float]]:
    matrix: dict[str, dict[str, float]] = {}
    for (edit_language, eval_language), value in zip(cells, means, strict=True):
        matrix.setdefault(edit_language, {})[eval_language] = float(value)
    return matrix


def _by_language(cells: list[tuple[str, str]], means: np.ndarray) -> dict[str, float]:
    """Per evaluation language: mean over edit languages of the present cells."""
    languages = list(dict.fromkeys(eval_language for _, eval_language in cells))
    by_language = {}
    for language in languages:
        mask = np.array([eval_language == language for _, eval_language in cells], dtype=bool)
        by_language[language] = float(means[mask].mean())
    return by_language


def _resample_weights(rng: np.random.Generator, replicates: int, group_of_edit: np.ndarray) -> np.ndarray:
    """How often each edit is drawn in each of `replicates` resamples of the *groups* (with replacement): an edit
    weighs as often as its group is drawn. With one group per edit this is the plain bootstrap over edits."""
    n_groups = int(group_of_edit.max()) + 1
    draws = rng.integers(0, n_groups, size=(replicates, n_groups))
    offsets = np.arange(replicates)[:, None] * n_groups
    counts = np.bincount((draws + offsets).ravel(), minlength=replicates * n_groups).reshape(replicates, n_groups)
    return counts[:, group_of_edit].astype(np.float64)


def _replicates(
    tables: Sequence[_Tables], group_of_edit: np.ndarray, resamples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """`REPLICATED_NAMES` of every bootstrap replicate for each run's tables, all under the *same* resampled
    weights (so that differences between the runs are paired)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_BOOTSTRAP_CELLS // len(group_of_edit))
    collected: list[dict[str, list[np.ndarray]]] = [{name: [] for name in REPLICATED_NAMES} for _ in tables]
    for start in range(0, resamples, chunk):
        weights = _resample_weights(rng, min(chunk, resamples - start), group_of_edit)
        for run_tables, store in zip(tables, collected, strict=True):
            summary, _ = _summaries(run_tables, weights)
            for name in REPLICATED_NAMES:
                store[name].append(summary[name])
    return [{name: np.concatenate(values) for name, values in store.items()} for store in collected]


def _percentiles(values: np.ndarray, confidence: float) -> list[float]:
    """The percentile interval of the defined (non-NaN) replicates; NaNs when none is defined."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    alpha = (1.0 - confidence) / 2.0
    return [float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))]


def _bootstrap(
    tables: _Tables, group_of_edit: np.ndarray, resamples: int, confidence: float, seed: int
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over groups of edits; replicates where a metric is undefined are skipped."""
    (replicates,) = _replicates([tables], group_of_edit, resamples, seed)
    return {name: _percentiles(replicates[name], confidence) for name in CI_METRIC_NAMES}


def _group_of_edit(records: _Records, edit_index: dict[str, int], group_ids) -> np.ndarray:
    """The group index of every edit (one group per edit without `group_ids`); an edit must have one group."""
    if group_ids is None:
        return np.arange(len(edit_index))
    groups = _as_str_list("group_ids", group_ids)
    if len(groups) != len(records.edit_ids):
        raise ValueError(f"`group_ids` needs one entry per record ({len(records.edit_ids)}), got {len(groups)}.")
    group_index: dict[str, int] = {}
    of_edit = np.full(len(edit_index), -1, dtype=np.int64)
    for edit_id, group in zip(records.edit_ids, groups, strict=True):
        index = group_index.setdefault(group, len(group_index))
        row = edit_index[edit_id]
        if of_edit[row] not in (-1, index):
            raise ValueError(
                f"Edit id {edit_id!r} appears with two group ids; all records of an edit share one group."
            )
        of_edit[row] = index
    return of_edit


def _point_estimates(tables: _Tables, n_edits: int) -> dict:
    """Every output except `n_records`, on the full data (each edit weighted once)."""
    es, loc = tables.es, tables.loc
    weights = np.ones((1, n_edits))
    summary, es_means = _summaries(tables, weights)
    loc_means = _cell_means(loc, weights)[0]
    es_by_language = _by_language(es.cells, es_means[0])
    spread = np.array(list(es_by_language.values()))
    result = {name: float(summary[name][0]) for name in CI_METRIC_NAMES}
    result["language_gap"] = float(spread.max() - spread.min()) if spread.size else float("nan")
    result["language_std"] = float(spread.std()) if spread.size else float("nan")
    result["es_by_language"] = es_by_language
    result["loc_by_language"] = _by_language(loc.cells, loc_means)
    result["es_matrix"] = _matrix(es.cells, es_means[0])
    result["loc_matrix"] = _matrix(loc.cells, loc_means)
    result["n_edits"] = n_edits
    return result


def compute_xl_edit_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    edit_ids: Sequence[str],
    edit_languages: Sequence[str],
    eval_languages: Sequence[str],
    kinds: Sequence[str],
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    group_ids: Sequence[str] | None = None,
) -> dict:
    """Cross-lingual edit success and locality, per language pair and aggregated.

    One record per scored prediction; all inputs are lists of str of equal length. A record is correct when its
    prediction equals its reference exactly. Cells `(edit language, eval language)` are the mean of their records;
    every aggregate is a mean of cells. Cells without records are absent from the matrices; an aggregate over no cells
    (e.g. `transfer` when every edit is scored only in its own language) is NaN.

    Args:
        predictions (`list[str]`): The edited model's prediction for each record.
        references (`list[str]`): For an `"edit"` record, the new target in the evaluation language; for a locality
            record (`"neighbour"`, `"retain"`, `"sequence"`), the model's prediction before the edit.
        edit_ids (`list[str]`): The edit each record belongs to (one edit language per edit id).
        edit_languages (`list[str]`): The language the edit was made in.
        eval_languages (`list[str]`): The language the record is evaluated in.
        kinds (`list[str]`): `"edit"` (scores edit success), or a locality part (see `KINDS`): `"neighbour"` (a fact
            of the edited relation about another subject: `locality_same_relation`), `"retain"` (an unrelated fact:
            `locality_other`) or `"sequence"` (an unrelated prompt read at every position: `locality_sequence`).
        bootstrap (`int`, *optional*, defaults to `0`): Number of bootstrap resamples for confidence intervals; `0`
            disables them. The resampled units are the groups of `group_ids` (the edits without it).
        confidence (`float`, *optional*, defaults to `0.95`): Coverage of the percentile intervals.
        seed (`int`, *optional*, defaults to `0`): Seed of the resampling generator.
        group_ids (`list[str]`, *optional*): One per record: the fact or example the edit was made from. Edits of one
            fact in several languages share it, and the bootstrap resamples groups, so that edits that are not
            independent are not counted as independent (all records of an edit must share one group).

    Returns:
        `dict`: The keys of `METRIC_NAMES` (floats, nested dicts `{edit_lang: {eval_lang: value}}` for the matrices,
        `{eval_lang: value}` for the per-language means, ints for the counts), plus `"ci"`
        (`{name: [low, high]}` for `CI_METRIC_NAMES`) when `bootstrap > 0`. `locality`, `loc_matrix` and
        `loc_by_language` pool the `"neighbour"` and `"retain"` records; each locality part is NaN without records
        of its kind, and so is `hmean_same_relation` without `"neighbour"` records.

    Raises:
        ValueError: On unequal lengths, empty input, non-str values, an unknown kind, an edit id with two edit
            languages, or invalid bootstrap options.

    Example:

    ```python
    >>> from hf_lime.metrics import compute_xl_edit_metrics
    >>> result = compute_xl_edit_metrics(
    ...     predictions=["Paris", "Paris", "Rome", "Berlin"],
    ...     references=["Paris", "Paris", "Roma", "Berlin"],
    ...     edit_ids=["e1", "e1", "e1", "e1"],
    ...     edit_languages=["en", "en", "en", "en"],
    ...     eval_languages=["en", "fr", "it", "fr"],
    ...     kinds=["edit", "edit", "edit", "retain"],
    ... )
    >>> result["reliability"], result["transfer"], result["locality"]
    (1.0, 0.5, 1.0)
    >>> result["es_matrix"]
    {'en': {'en': 1.0, 'fr': 1.0, 'it': 0.0}}

    ```
    """
    records = _validate_records(
        predictions=predictions,
        references=references,
        edit_ids=edit_ids,
        edit_languages=edit_languages,
        eval_languages=eval_languages,
        kinds=kinds,
    )
    _validate_bootstrap_options(bootstrap, confidence, seed)
    edit_index = {edit_id: i for i, edit_id in enumerate(dict.fromkeys(records.edit_ids))}
    tables = _tables(records, edit_index)
    result = _point_estimates(tables, len(edit_index))
    result["n_records"] = len(records.predictions)
    result = {name: result[name] for name in METRIC_NAMES}
    group_of_edit = _group_of_edit(records, edit_index, group_ids)
    if bootstrap > 0:
        result[CI_KEY] = _bootstrap(tables, group_of_edit, int(bootstrap), float(confidence), int(seed))
    return result
