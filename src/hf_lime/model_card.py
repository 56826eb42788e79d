"""The README.md model card written next to a saved LIME editor (YAML metadata for the Hub + a readable body)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .tasks import PIPELINE_TAGS, TASK_NAMES

TAGS = ["hf_lime", "lime", "model-editing", "cross-lingual", "peft"]
PAPER_URL = "https://huggingface.co/papers/2205.12677"
EDITOR_NAMES = {
    "mend": "MEND (gradient-transform hypernetwork)",
    "ke": "KnowledgeEditor",
    "ft": "fine-tuning (no learned editor)",
}
# The `lime_xl_edit` scalars reported in the card's `model-index` (its `eval_results`).
MODEL_INDEX_METRICS = ("reliability", "transfer", "edit_success", "locality", "hmean", "language_gap")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_model_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub model id (`"org/name"` or `"name"`) rather than a local path."""
    return bool(name) and _HUB_ID.match(name) is not None and not Path(name).expanduser().exists()


def render_model_card(
    *,
    base_model: str,
    task: str,
    editor: str,
    languages: Sequence[str],
    use_lime_mask: bool,
    repo_id: str | None = None,
    training_info: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
) -> str:
    """
    Render the model card of a LIME editor with huggingface_hub's `ModelCard`: YAML metadata (`library_name`,
    `pipeline_tag`, `base_model`, `language`, `license`, and a `model-index` of the `lime_xl_edit` scalars as
    `EvalResult`s) and a readable body.

    Args:
        base_model (`str`): The base model's Hub id or path (`base_model_name_or_path`). It goes into the YAML
            `base_model` field only when it is a Hub id (the Hub rejects local paths there).
        task (`str`): `"masked_lm"`, `"seq_cls"` or `"causal_lm"`.
        editor (`str`): `"mend"`, `"ke"` or `"ft"`.
        languages (`Sequence[str]`): The editor's languages, in mask order.
        use_lime_mask (`bool`): Whether LiME's language masks are on.
        repo_id (`str`, *optional*, defaults to `None`): Where the editor lives, for the usage snippet.
        training_info (`Mapping[str, Any]`, *optional*, defaults to `None`): What the trainer recorded (data set,
            steps, languages...); rendered as a list.
        metrics (`Mapping[str, Any]`, *optional*, defaults to `None`): Evaluation results: `{name: value}` or
            `{row: {column: value}}` (e.g. per language); rendered as a table. Its `lime_xl_edit` scalars
            (reliability, transfer, locality, ...) also go into the `model-index`.
        license (`str`, *optional*, defaults to `None`): The card's `license` (a Hub license id such as
            `"apache-2.0"`); usually the base model's.

    Returns:
        `str`: the full README.md (YAML front matter and Markdown body).
    """
    from huggingface_hub import ModelCard, ModelCardData

    name = (repo_id or "").rstrip("/").split("/")[-1] or "lime-editor"
    eval_results = _eval_results(metrics, training_info)
    card_data = ModelCardData(
        library_name="hf_lime",
        pipeline_tag=PIPELINE_TAGS.get(task),
        license=license,
        tags=list(TAGS),
        base_model=base_model if is_hub_model_id(base_model) else None,
        language=list(languages) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    sections = [
        f"# Cross-lingual model editor for `{base_model}`",
        _summary(base_model, task, editor, languages, use_lime_mask),
        "## Training\n\n" + _training(training_info),
        "## Evaluation\n\n" + _evaluation(metrics),
        "## Usage\n\n" + _usage(repo_id or "<repo_id>", task, languages),
        f"## Citation\n\nLiME: Xu et al., *Language Anisotropic Cross-Lingual Model Editing*, Findings of ACL 2023, "
        f"{PAPER_URL}.",
    ]
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"))


def _eval_results(metrics: Mapping[str, Any] | None, training_info: Mapping[str, Any] | None) -> list:
    """The `lime_xl_edit` scalars of `metrics` as `EvalResult`s (none when there are none)."""
    from huggingface_hub import EvalResult

    if not metrics:
        return []
    dataset = str((training_info or {}).get("dataset") or metrics.get("dataset") or "custom")
    return [
        EvalResult(
            task_type="model-editing",
            task_name="Cross-lingual model editing",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=key,
            metric_name=key.replace("_", " "),
            metric_value=float(metrics[key]),
        )
        for key in MODEL_INDEX_METRICS
        if isinstance(metrics.get(key), (int, float)) and math.isfinite(float(metrics[key]))
    ]


def _summary(base_model: str, task: str, editor: str, languages: Sequence[str], use_lime_mask: bool) -> str:
    lime = "on (a language-specific hard-concrete mask per editing language)" if use_lime_mask else "off"
    rows = [
        f"- **Base model:** `{base_model}` ({TASK_NAMES.get(task, task)})",
        f"- **Editor:** {EDITOR_NAMES.get(editor, editor)}",
        f"- **Languages:** {', '.join(languages) if languages else 'not language-specific'}",
        f"- **LiME language masks:** {lime}",
    ]
    intro = (
        "An hf_lime editor: a PEFT adapter that edits the base model's "
        "predictions in one language so that the edit holds in every language, leaving unrelated inputs alone "
        f"([LiME]({PAPER_URL}))."
    )
    return intro + "\n\n" + "\n".join(rows)


def _training(training_info: Mapping[str, Any] | None) -> str:
    if not training_info:
        return "Training details were not recorded with this editor."
    return "\n".join(f"- **{key}:** {_format_value(value)}" for key, value in training_info.items())


def _evaluation(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "No evaluation results were recorded with this editor."
    if all(isinstance(value, Mapping) for value in metrics.values()):
        columns = list(dict.fromkeys(col for row in metrics.values() for col in row))
        lines = ["| | " + " | ".join(map(str, columns)) + " |", "|---|" + "---|" * len(columns)]
        for name, row in metrics.items():
            lines.append(f"| {name} | " + " | ".join(_format_value(row.get(col, "")) for col in columns) + " |")
        return "\n".join(lines)
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, Mapping)}
    lines = ["| Metric | Value |", "|---|---|"]
    lines += [f"| {name} | {_format_value(value)} |" for name, value in scalars.items()]
    for name, title in (("es_matrix", "Edit success"), ("loc_matrix", "Locality")):
        matrix = metrics.get(name)
        if isinstance(matrix, Mapping) and matrix:
            lines += ["", f"{title} (rows: editing language, columns: evaluation language):", ""]
            lines.append(_evaluation(matrix))
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _usage(repo_id: str, task: str, languages: Sequence[str]) -> str:
    language = languages[0] if languages else None
    lang_arg = f', language="{language}"' if language else ""
    example = {
        "masked_lm": f'edit = editor.edit("The capital of France is [MASK].", "Lyon"{lang_arg})\n'
        'print(editor.predict("The capital of France is [MASK]."))',
        "seq_cls": f'edit = editor.edit(("A man sleeps.", "A man is awake."), "contradiction"{lang_arg})\n'
        'print(editor.predict(("A man sleeps.", "A man is awake.")))',
        "causal_lm": f'edit = editor.edit("The capital of France is", "Lyon"{lang_arg})\n'
        'print(editor.predict("The capital of France is"))',
    }.get(task, "")
    return (
        "```python\nfrom hf_lime import LimeEditor\n\n"
        f'editor = LimeEditor.from_pretrained("{repo_id}")  # loads the base model named in adapter_config.json\n'
        f"{example}\nedit.revert()  # the base model again, bit for bit\n```"
    )


ADAPTER_NOTICE_MARKER = "<!-- hf_lime: LIME adapter -->"
ADAPTER_NOTICE = f"""{ADAPTER_NOTICE_MARKER}
## A LIME adapter (hf_lime)

This adapter is a cross-lingual model editor of the `hf_lime` library (LiME, {PAPER_URL}):
its `adapter_config.json` has `"peft_type": "LIME"`, a PEFT method that hf_lime registers when it is imported.
Without `import hf_lime`, `PeftModel.from_pretrained` fails with `KeyError: 'LIME'`.

```python
import hf_lime  # registers the LIME PEFT method
from hf_lime import LimeEditor

editor = LimeEditor.from_pretrained("<this folder or repo>")   # checks every file, loads the base model
```
"""


def add_lime_adapter_notice(readme: str | Path) -> Path:
    """Tag a PEFT-written README.md as a LIME adapter and say that it needs `import hf_lime` (idempotent)."""
    from huggingface_hub import ModelCard

    path = Path(readme)
    card = ModelCard.load(path) if path.exists() else ModelCard("---\n---\n")
    card.data.tags = sorted(set(card.data.tags or []) | set(TAGS))
    if ADAPTER_NOTICE_MARKER not in card.text:
        card.text = ADAPTER_NOTICE + "\n" + card.text
    path.write_text(str(card), encoding="utf-8")
    return path
