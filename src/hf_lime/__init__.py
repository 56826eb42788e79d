"""hf_lime: cross-lingual model editing (LiME, https://huggingface.co/papers/2205.12677) for the HF ecosystem."""

from .editing import Edit, LayerDelta
from .masks import HardConcreteGate, LanguageMask
from .tuner import LimeConfig, LimeLayer, LimeModel

__version__ = "0.1.0"

__all__ = [
    "Edit",
    "HardConcreteGate",
    "LanguageMask",
    "LayerDelta",
    "LimeConfig",
    "LimeLayer",
    "LimeModel",
]
