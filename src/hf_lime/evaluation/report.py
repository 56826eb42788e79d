"""The result of a cross-lingual edit evaluation, its text table and its report files (JSON + figures)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics.xl_edit import SCALAR_METRIC_NAMES

SUMMARY_NAMES = SCALAR_METRIC_NAMES  # the summary shows the metric's scalars
"""The summary lines of `format_table`, in order."""


@dataclass
class EvaluationResult:
    """What `evaluate_editor` returns.

    Args:
        metrics (`dict`): Exactly the output of `hf_lime.metrics.compute_xl_edit_metrics` on the records (and so of
            `evaluate.load("lime_xl_edit").compute(**records)`).
        settings (`dict`): How the numbers were obtained: task, editor, languages, counts, `new_target`, seed, and
            the number of edits actually made per edit language.
        records (`dict[str, list[str]]`, *optional*): The raw records (`predictions`, `references`, `edit_ids`,
            `edit_languages`, `eval_languages`, `kinds`) when `return_records=True`, else `None`.
        readings (`dict[str, EvaluationResult]`, *optional*): Other readings of the same edits (`extra_scorings`
            of `evaluate_editor`, e.g. `"candidates"`), each of edit records only.

    Example:

    ```python
    >>> result = EvaluationResult(metrics={"hmean": 0.5}, settings={"task": "masked_lm"})
    >>> result.metrics["hmean"], result.records is None
    (0.5, True)

    ```
    """

    metrics: dict
    settings: dict
    records: dict[str, list[str]] | None = None
    readings: dict[str, EvaluationResult] = field(default_factory=dict)


def _metrics_of(result: EvaluationResult | dict) -> dict:
    metrics = result.metrics if isinstance(result, EvaluationResult) else result
    missing = [key for key in ("es_matrix", "loc_matrix", "es_by_language", "loc_by_language") if key not in metrics]
    if not isinstance(metrics, dict) or missing:
        raise ValueError(
            f"Expected an EvaluationResult or the dict of compute_xl_edit_metrics; it lacks the keys {missing}."
        )
    return metrics


def _cell(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _ordered(present: set[str], order: list[str] | None) -> list[str]:
    """`present` in the user's language order when known (sorted otherwise), unknown ones last."""
    order = [lang for lang in order or [] if lang in present]
    return order + sorted(present - set(order))


def format_table(result: EvaluationResult | dict) -> str:
    """A plain-text table: one row per evaluation language, one ES and one Loc column per edit language.

    Languages follow the order of the evaluation's settings (sorted for a bare metric dict). Column `ES en` is the
    edit success of edits made in `en` as scored in the row's language (the matrix
    `es_matrix[en][row]`), `Loc en` likewise for locality; `ES mean`/`Loc mean` are `es_by_language` and
    `loc_by_language`. Summary lines follow (with `[low, high]` intervals when the result was bootstrapped).

    Args:
        result (`EvaluationResult` or `dict`): A result of `evaluate_editor`, or a `compute_xl_edit_metrics` dict.

    Returns:
        `str`: The table, lines joined by `"\\n"`; absent cells show as `n/a`.
    """
    metrics = _metrics_of(result)
    es, loc = metrics["es_matrix"], metrics["loc_matrix"]
    settings = result.settings if isinstance(result, EvaluationResult) else {}
    edit_languages = _ordered({*es, *loc}, settings.get("edit_languages"))
    scored = {lang for matrix in (es, loc) for cells in matrix.values() for lang in cells}
    rows = _ordered(scored, settings.get("eval_languages"))
    headers = ["eval", *[f"ES {lang}" for lang in edit_languages], "ES mean"]
    headers += [f"Loc {lang}" for lang in edit_languages] + ["Loc mean"]
    table = [headers]
    for row in rows:
        line = [row, *[_cell(es.get(lang, {}).get(row)) for lang in edit_languages]]
        line.append(_cell(metrics["es_by_language"].get(row)))
        line += [_cell(loc.get(lang, {}).get(row)) for lang in edit_languages]
        line.append(_cell(metrics["loc_by_language"].get(row)))
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"(columns: edit language; rows: evaluation language; n_edits={metrics.get('n_edits')})")
    intervals = metrics.get("ci", {})
    width = max(len(name) for name in SUMMARY_NAMES) + 2
    for name in SUMMARY_NAMES:
        if name in metrics:
            interval = intervals.get(name)
            extra = f"  [{_cell(interval[0])}, {_cell(interval[1])}]" if interval else ""
            lines.append(f"{name:<{width}}{_cell(metrics[name])}{extra}")
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """`value` with every NaN replaced by `None` (`null`), so it is standard JSON: e.g. metrics with an undefined
    locality part, for `metrics.json` or `LimeEditor(metrics=...)`."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def save_report(result: EvaluationResult | dict, output_dir: str | Path) -> dict[str, Path]:
    """Write the metrics, the table and the figures of an evaluation into `output_dir`.

    Files: `metrics.json` (the metric dict; NaN written as `null`), `table.txt` (`format_table`), `settings.json`
    and `records.json` when the result has them, `metrics_<name>.json` (and `records_<name>.json`) for each other
    reading in `result.readings`, and the figures `xl_edit_es.png`, `xl_edit_loc.png` (heatmaps; the Loc one only
    when there are locality records) and `by_language.png` (per-language bars).

    Args:
        result (`EvaluationResult` or `dict`): A result of `evaluate_editor`, or a `compute_xl_edit_metrics` dict.
        output_dir (`str` or `Path`): The folder (created if needed).

    Returns:
        `dict[str, Path]`: The written files by name: `"metrics"`, `"table"`, `"settings"`, `"records"`,
        `"es_heatmap"`, `"loc_heatmap"`, `"by_language"` (those written).
    """
    from ..metrics.plots import plot_by_language, plot_es_loc

    metrics = _metrics_of(result)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {"metrics": _write_json(output_dir / "metrics.json", metrics)}
    written["table"] = output_dir / "table.txt"
    written["table"].write_text(format_table(result) + "\n", encoding="utf-8")
    if isinstance(result, EvaluationResult):
        written["settings"] = _write_json(output_dir / "settings.json", result.settings)
        if result.records is not None:
            written["records"] = _write_json(output_dir / "records.json", result.records)
        for name, reading in result.readings.items():
            written[f"metrics_{name}"] = _write_json(output_dir / f"metrics_{name}.json", reading.metrics)
            if reading.records is not None:
                written[f"records_{name}"] = _write_json(output_dir / f"records_{name}.json", reading.records)
    for path in plot_es_loc(metrics, output_dir / "xl_edit"):
        written["es_heatmap" if path.name.endswith("_es.png") else "loc_heatmap"] = path
    written["by_language"] = plot_by_language(metrics, output_dir / "by_language.png")
    return written
