"""The widget of the `lime_xl_edit` metric: a table of records in, the metric's result out (as evaluate's own
metric Spaces have; evaluate 0.4's `launch_gradio_widget` uses the gradio 3 API, so the widget is built here with
the current one). Run `python app.py` beside `lime_xl_edit.py` (the metric's Space runs it as it is)."""

from __future__ import annotations

import json
from pathlib import Path

import evaluate

HERE = Path(__file__).resolve().parent
COLUMNS = ["predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds"]
EXAMPLE = [
    ["Paris", "Paris", "e1", "en", "en", "edit"],
    ["Paris", "Paris", "e1", "en", "fr", "edit"],
    ["Rome", "Roma", "e1", "en", "it", "edit"],
    ["Berlin", "Berlin", "e1", "en", "fr", "retain"],
    ["Madrid", "Lisbon", "e1", "en", "it", "retain"],
]


def compute_from_rows(metric: evaluate.EvaluationModule, rows: list[list], bootstrap: int = 0) -> dict:
    """The metric over table rows (one record each, in `COLUMNS` order; blank rows skipped)."""
    records = [[str(cell).strip() for cell in row] for row in rows if any(str(cell).strip() for cell in row)]
    if not records or any(len(row) != len(COLUMNS) for row in records):
        raise ValueError(f"Give one record per row with the columns {COLUMNS}.")
    columns = {name: [row[i] for row in records] for i, name in enumerate(COLUMNS)}
    return metric.compute(**columns, bootstrap=int(bootstrap))


def build_widget(metric: evaluate.EvaluationModule | None = None):
    """The Gradio Blocks of the widget; `/compute` is also its API."""
    import gradio as gr

    metric = metric or evaluate.load(str(HERE))
    readme = (HERE / "README.md").read_text(encoding="utf-8").split("---", 2)[-1]

    def run(table, bootstrap):
        if hasattr(table, "values"):  # a pandas DataFrame from the page
            table = table.values.tolist()
        rows = table["data"] if isinstance(table, dict) else table
        try:
            return json.dumps(compute_from_rows(metric, rows, bootstrap), indent=2)
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error)) from error

    with gr.Blocks(title="Metric: lime_xl_edit") as widget:
        gr.Markdown("# Metric: lime_xl_edit\n" + metric.info.description)
        table = gr.Dataframe(headers=COLUMNS, value=EXAMPLE, datatype=["str"] * len(COLUMNS), interactive=True,
                             label="Records")  # fmt: skip
        bootstrap = gr.Number(0, precision=0, label="bootstrap (resamples for intervals; 0 = none)")
        button = gr.Button("Compute", variant="primary")
        result = gr.Code(language="json", label="lime_xl_edit")
        button.click(run, [table, bootstrap], result, api_name="compute")
        gr.Markdown(readme)
    return widget


if __name__ == "__main__":
    build_widget().launch()
