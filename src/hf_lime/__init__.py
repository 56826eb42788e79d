"""hf_lime: cross-lingual model editing (LiME, https://huggingface.co/papers/2205.12677) for the HF ecosystem."""

from .deltas import LayerDelta
from .editor import LimeEditor
from .masks import HardConcreteGate, LanguageMask
from .metrics.install import install_evaluate_module_on_import
from .tuner import LimeConfig, LimeLayer, LimeModel
from .tuner.edit import Edit
from .tuner.edit_group import EditGroup
from .version import __version__ as __version__

# Makes `evaluate.load("lime_xl_edit")` work offline after `import hf_lime` (cheap when already installed).
install_evaluate_module_on_import()

__all__ = [
    "Edit",
    "EditGroup",
    "HardConcreteGate",
    "LanguageMask",
    "LayerDelta",
    "LimeEditor",
    "LimeConfig",
    "LimeLayer",
    "LimeModel",
]
