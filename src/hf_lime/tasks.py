"""The one home of "task": the three supported kinds, their names and Auto classes, and which one a model solves."""

from __future__ import annotations

from typing import Any

from torch import nn

TASKS = ("masked_lm", "seq_cls", "causal_lm")
TASK_NAMES = {"masked_lm": "masked language model", "seq_cls": "sequence classifier", "causal_lm": "causal LM"}
PIPELINE_TAGS = {"masked_lm": "fill-mask", "seq_cls": "text-classification", "causal_lm": "text-generation"}
AUTO_CLASSES = {
    "masked_lm": "AutoModelForMaskedLM",
    "seq_cls": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
}
TASK_SUFFIXES = {
    "masked_lm": ("ForMaskedLM",),
    "seq_cls": ("ForSequenceClassification",),
    "causal_lm": ("ForCausalLM", "LMHeadModel"),
}


def check_task(task: Any) -> str:
    """`task` if it is one of `TASKS`; a `ValueError` naming the allowed ones otherwise."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; allowed tasks are {TASKS}.")
    return task


def auto_class(task: str) -> type:
    """The transformers Auto class that loads a model of `task` (e.g. `AutoModelForMaskedLM`)."""
    import transformers

    return getattr(transformers, AUTO_CLASSES[check_task(task)])


def is_causal_lm(model: Any) -> bool:
    """Decoder-only generative models predict token `t + 1` at position `t` (labels are shifted by the loss)."""
    can_generate = getattr(model, "can_generate", None)
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    return bool(callable(can_generate) and can_generate() and not encoder_decoder)


def infer_task(model: nn.Module) -> str:
    """The task of a transformers model, from its class: Auto-mapping membership first, then the name suffix."""
    return task_from_class_name(type(model).__name__)


def task_from_class_name(name: str) -> str:
    """`"masked_lm"`, `"seq_cls"` or `"causal_lm"` for a model class name such as `"BertForMaskedLM"`.

    Raises:
        `ValueError`: the class is none of the supported kinds.
    """
    from transformers.models.auto import modeling_auto as auto

    mappings = {
        "masked_lm": auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        "seq_cls": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "causal_lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    }
    for task, mapping in mappings.items():
        names = {n for value in mapping.values() for n in ((value,) if isinstance(value, str) else value)}
        if name in names:
            return task
    for task, suffixes in TASK_SUFFIXES.items():
        if name.endswith(suffixes):
            return task
    raise ValueError(
        f"Cannot tell the task of a {name}: LimeEditor handles masked LMs (*ForMaskedLM), sequence classifiers "
        "(*ForSequenceClassification) and causal LMs (*ForCausalLM). Pass `task=` explicitly."
    )


def model_label2id(model: nn.Module, task: str) -> dict[str, int] | None:
    """A classifier's `config.label2id` (class name -> id), `None` for the LM tasks or when the config has none."""
    if task != "seq_cls":
        return None
    mapping = getattr(getattr(model, "config", None), "label2id", None) or {}
    return {str(name): int(index) for name, index in mapping.items()} or None
