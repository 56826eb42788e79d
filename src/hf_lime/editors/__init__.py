"""Editing algorithms as plain torch modules behind one interface ([`BaseEditor`]).

`EDITOR_REGISTRY` maps a `LimeConfig.editor` name to the editor class and a function that reads its constructor
arguments from the config. Adding an editor touches this package and `LimeConfig`'s allowed values only.
"""

from .base import BaseEditor, EditorOutput, EditStepSizes, LayerSpec, build_editor
from .ft import FineTuneEditor, ft_kwargs
from .ke import KnowledgeEditor, ke_kwargs
from .mend import MendEditor, mend_kwargs

EDITOR_REGISTRY = {
    "mend": (MendEditor, mend_kwargs),
    "ke": (KnowledgeEditor, ke_kwargs),
    "ft": (FineTuneEditor, ft_kwargs),
}

__all__ = [
    "EDITOR_REGISTRY",
    "BaseEditor",
    "EditStepSizes",
    "EditorOutput",
    "FineTuneEditor",
    "KnowledgeEditor",
    "LayerSpec",
    "MendEditor",
    "build_editor",
]
