"""Figures of cross-lingual edit results: ES/Loc heatmaps and per-language bars.

matplotlib is imported inside the functions, and figures are drawn on an Agg canvas without `pyplot`, so the global
backend of the caller (a notebook, a GUI) is left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path


def _check_matrix(matrix: dict) -> tuple[list[str], list[str]]:
    if not isinstance(matrix, dict) or not matrix or not all(isinstance(row, dict) for row in matrix.values()):
        raise ValueError(
            "`matrix` must be a non-empty nested dict {edit_language: {eval_language: value}}, "
            f"got {type(matrix).__name__}."
        )
    rows = list(matrix)
    columns = list(dict.fromkeys(column for row in matrix.values() for column in row))  # the caller's order
    if not columns:
        raise ValueError("`matrix` has no cells to plot.")
    return rows, columns


def plot_matrix(matrix: dict, title: str, path: str | Path) -> Path:
    """Heatmap of a `{edit_language: {eval_language: value}}` matrix with each value annotated.

    Rows are edit languages, columns evaluation languages; absent cells are left blank. The colour scale is
    fixed to [0, 1] so figures of different runs compare.

    Args:
        matrix (`dict`): A nested dict such as `result["es_matrix"]` of `compute_xl_edit_metrics`.
        title (`str`): The figure title.
        path (`str` or `Path`): Where to write the PNG (parent directories are created).

    Returns:
        `Path`: The written file.
    """
    rows, columns = _check_matrix(matrix)
    values = np.array([[matrix[row].get(column, np.nan) for column in columns] for row in rows], dtype=float)
    figure = _new_figure(1.2 + 0.55 * len(columns), 1.2 + 0.5 * len(rows))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_facecolor("#e6e6e6")  # absent cells show through as grey
    for i in range(len(rows)):
        for j in range(len(columns)):
            if np.isnan(values[i, j]):
                axes.text(j, i, "n/a", ha="center", va="center", color="#777777", fontsize=7)
            else:
                colour = "black" if values[i, j] > 0.6 else "white"
                axes.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=8)
    axes.set_xticks(range(len(columns)), labels=columns)
    axes.set_yticks(range(len(rows)), labels=rows)
    axes.set_xlabel("evaluation language")
    axes.set_ylabel("edit language")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return _save(figure, path)


def _title(name: str, value: float) -> str:
    return f"{name} (mean {value:.3f})" if not np.isnan(value) else name


def plot_es_loc(result: dict, path_prefix: str | Path) -> list[Path]:
    """Write the edit-success and locality heatmaps of a result as `<path_prefix>_es.png` and `<path_prefix>_loc.png`.

    Args:
        result (`dict`): The output of `compute_xl_edit_metrics` or of the `lime_xl_edit` evaluate module.
        path_prefix (`str` or `Path`): Path prefix of the two files, e.g. `"outputs/run1"`.

    Returns:
        `list[Path]`: The written files (a matrix without cells, e.g. Loc without retain records, is skipped).
    """
    written = []
    for key, name, suffix, overall in (
        ("es_matrix", "Edit success", "es", "edit_success"),
        ("loc_matrix", "Locality", "loc", "locality"),
    ):
        if key not in result:
            raise ValueError(f"`result` has no {key!r}; pass the output of compute_xl_edit_metrics.")
        if result[key]:
            title = _title(name, float(result.get(overall, np.nan)))
            written.append(plot_matrix(result[key], title, f"{path_prefix}_{suffix}.png"))
    return written


def plot_by_language(result: dict, path: str | Path) -> Path:
    """Grouped bar chart of `es_by_language` and `loc_by_language` per evaluation language.

    Args:
        result (`dict`): The output of `compute_xl_edit_metrics` or of the `lime_xl_edit` evaluate module.
        path (`str` or `Path`): Where to write the PNG.

    Returns:
        `Path`: The written file.
    """
    for key in ("es_by_language", "loc_by_language"):
        if not isinstance(result.get(key), dict):
            raise ValueError(f"`result` has no {key!r} dict; pass the output of compute_xl_edit_metrics.")
    languages = list(dict.fromkeys([*result["es_by_language"], *result["loc_by_language"]]))
    if not languages:
        raise ValueError("`result` has no per-language values to plot.")
    positions = np.arange(len(languages))
    figure = _new_figure(max(4.0, 1.5 + 0.7 * len(languages)), 3.4)
    axes = figure.add_subplot()
    for offset, key, label in ((-0.2, "es_by_language", "edit success"), (0.2, "loc_by_language", "locality")):
        heights = [result[key].get(language, np.nan) for language in languages]
        bars = axes.bar(positions + offset, heights, width=0.4, label=label)
        labels = ["n/a" if np.isnan(height) else f"{height:.2f}" for height in heights]
        axes.bar_label(bars, labels=labels, fontsize=6, padding=1)
    axes.set_xticks(positions, labels=languages)
    axes.set_xlabel("evaluation language")
    axes.set_ylabel("mean over edit languages")
    axes.set_ylim(0.0, 1.12)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2, frameon=False)
    axes.set_title("Per-language ES and Loc")
    return _save(figure, path)
