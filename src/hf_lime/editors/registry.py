"""`EDITOR_REGISTRY`: `LimeConfig.editor` name -> editor class and the function reading its config arguments."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BaseEditor, LayerSpec
from .ft import FineTuneEditor, ft_kwargs
from .ke import KnowledgeEditor, ke_kwargs
from .mend import MendEditor, mend_kwargs

EDITOR_REGISTRY = {
    "mend": (MendEditor, mend_kwargs),
    "ke": (KnowledgeEditor, ke_kwargs),
    "ft": (FineTuneEditor, ft_kwargs),
}


def build_editor(layers: list[LayerSpec], config: Any, model: nn.Module | None = None) -> BaseEditor:
    """
    Instantiate the editor named by `config.editor` (a [`LimeConfig`]) with plain constructor arguments: those
    read from the config by the registry, plus those the editor class reads from the base `model` (if given).
    """
    if config.editor not in EDITOR_REGISTRY:
        raise ValueError(f"Unknown editor {config.editor!r}; available: {sorted(EDITOR_REGISTRY)}.")
    cls, kwargs_from_config = EDITOR_REGISTRY[config.editor]
    kwargs = kwargs_from_config(config)
    if model is not None:
        kwargs.update(cls.model_kwargs(model))
    return cls(layers, **kwargs)
