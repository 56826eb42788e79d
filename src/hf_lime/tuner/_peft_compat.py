"""The one place that touches PEFT's registries.

`peft.utils.register_peft_method` only accepts names already in the `PeftType` enum, so a method defined outside
peft is registered by writing the config, tuner and prefix into peft's mappings under the string `"LIME"`.
`PeftModel.from_pretrained` then finds the type by the `peft_type` string in `adapter_config.json`. PEFT's model card
writer is wrapped so that a LIME adapter's README names hf_lime (without it, loading fails with `KeyError: 'LIME'`).
"""

from __future__ import annotations

from .config import PEFT_TYPE, LimeConfig
from .model import LimeModel


def register_lime() -> None:
    """Register the "LIME" PEFT method (idempotent), and have `PeftModel.save_pretrained` of a LIME adapter write a
    model card that names hf_lime and the `import hf_lime` it needs."""
    from peft import PeftModel, mapping

    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = LimeConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = LimeModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = LimeModel.prefix
    if not getattr(PeftModel.create_or_update_model_card, "_hf_lime", False):
        PeftModel.create_or_update_model_card = _with_lime_notice(PeftModel.create_or_update_model_card)


def _with_lime_notice(original):
    """PEFT's own card writer, followed by the LIME notice for LIME adapters (other adapters are left alone)."""

    def create_or_update_model_card(self, output_dir: str) -> None:
        original(self, output_dir)
        if str(getattr(self.active_peft_config, "peft_type", "")) == PEFT_TYPE:
            from pathlib import Path

            from ..model_card import add_lime_adapter_notice

            add_lime_adapter_notice(Path(output_dir) / "README.md")

    create_or_update_model_card._hf_lime = True
    create_or_update_model_card.__doc__ = original.__doc__
    return create_or_update_model_card
