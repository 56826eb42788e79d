"""The one place that touches PEFT's registries.

`peft.utils.register_peft_method` only accepts names already in the `PeftType` enum, so a method defined outside
peft is registered by writing the config, tuner and prefix into peft's mappings under the string `"LIME"`.
`PeftModel.from_pretrained` then finds the type by the `peft_type` string in `adapter_config.json`.
"""

from __future__ import annotations

from .config import PEFT_TYPE, LimeConfig
from .model import LimeModel


def register_lime() -> None:
    """Register the "LIME" PEFT method (idempotent)."""
    from peft import mapping

    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = LimeConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = LimeModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = LimeModel.prefix
