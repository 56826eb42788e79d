"""The PEFT method "LIME": config, layer and tuner. Registered with PEFT on import."""

from ._peft_compat import register_lime
from .config import LimeConfig
from .layer import LimeLayer
from .model import LimeModel

register_lime()

__all__ = ["LimeConfig", "LimeLayer", "LimeModel", "register_lime"]
