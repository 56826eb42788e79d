"""Which of the three supported tasks a transformers model solves, told from its class."""

from __future__ import annotations

from torch import nn

TASK_SUFFIXES = {
    "masked_lm": ("ForMaskedLM",),
    "seq_cls": ("ForSequenceClassification",),
    "causal_lm": ("ForCausalLM", "LMHeadModel"),
}


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
