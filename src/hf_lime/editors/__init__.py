"""Editing algorithms as plain torch modules behind one interface ([`BaseEditor`]).

`EDITOR_REGISTRY` maps a `LimeConfig.editor` name to the editor class and a function that reads its constructor
arguments from the config. Adding an editor touches this package and `LimeConfig`'s allowed values only.
"""

from .base import BaseEditor, EditorOutput, EditStepSizes, LayerSpec
from .ft import FineTuneEditor
from .ke import KnowledgeEditor
from .mend import MendEditor
from .protocol import EditorContext
from .registry import EDITOR_REGISTRY, build_editor

__all__ = [
    "EDITOR_REGISTRY",
    "BaseEditor",
    "EditStepSizes",
    "EditorContext",
    "EditorOutput",
    "FineTuneEditor",
    "KnowledgeEditor",
    "LayerSpec",
    "MendEditor",
    "build_editor",
]
