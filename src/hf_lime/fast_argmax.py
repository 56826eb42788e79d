"""The argmax of `h Wᵀ + b` over a large vocabulary, exactly, from a bfloat16 product and a float32 check.

Reading an answer over the whole vocabulary (`scoring="open"`) needs only the argmax of each row's logits, never the
logits. On CPUs with bfloat16 instructions (AVX512-BF16, AMX) the product with a bfloat16 copy of `W` is several
times faster than in float32 (a 250k × 384 vocabulary, 128 rows, one thread, AMD EPYC with AVX512-BF16: 1.35 ms per
row against 4.1 ms). The bfloat16 logit `ŝ_v = bf16(bf16(h)·bf16(w_v) + bf16(b_v))` (float32 sums) differs from the
float32 logit `l_v` by at most `E₁ + u·(|ŝ_v| + E₁ + P)` up to terms in u², where `u = 2⁻⁸` is bfloat16's unit
roundoff, `P = ‖h‖·max_v ‖w_v‖` bounds every `|h·w_v|` and `E₁ = (2u + d·2⁻²⁴)·P` covers the rounded inputs and the
sums. If `v*` is the float32 argmax and `ŝ_max` the bfloat16 maximum, then `ŝ_v* ≥ ŝ_max − W` with
`W = 2E₁ + 2u·(2|ŝ_max| + 3E₁ + P)` (and a little room): every token within `W` of the bfloat16 maximum is scored
again in float32 (found from the maxima of blocks of `BLOCK` ids: only blocks whose maximum reaches the floor are
scanned), and the best of those few is the argmax: the token the float32 product gives (up to float32
rounding of exact near-ties; ties go to the smallest id, as `torch.argmax` does).

[`argmax_product`] times both routes the first time it meets a row count (rounded up to a power of two), per weight
shape and thread count, and keeps the checked route only where it is at least `MARGIN` times faster, so CPUs without
fast bfloat16 keep the plain product. The bfloat16 copy is made once per weight and made again if the weight or the
bias changes in place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .head_product import MARGIN, MIN_ELEMENTS, clear_copies, head_product
from .head_product import bfloat16_copy as _low_copy

UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 significant bits
FLOAT32_ROUNDOFF = 2.0**-24
MAX_ROWS = 256  # rows per product on either route (bounds the (rows, vocab) logits: 256 MB for 250k tokens)
BLOCK = 1024  # token ids per block of the scan for the tokens close to the bfloat16 maximum

_STATE = {"enabled": True}
# (row bucket, weight shape, threads) → "plain" or "checked"
_CHOICES: dict[tuple, str] = {}


def _plain(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return head_product(h, weight, bias).argmax(dim=-1)


def _window(h: torch.Tensor, largest: float, top: torch.Tensor) -> torch.Tensor:
    """Per row, how far below the bfloat16 maximum `top` the float32 argmax's bfloat16 logit can lie (the module
    docstring's bound)."""
    u = UNIT_ROUNDOFF
    product = h.norm(dim=1) * largest  # bounds |h · w_v| for every v
    inputs = (2 * u + u * u + h.shape[1] * FLOAT32_ROUNDOFF) * product  # h, W rounded; float32 sums
    return (2 * inputs + 2 * u * (2 * top.abs() + 3 * inputs + product)) * (1 + 4 * u) + 1e-5


def _block_maxima(approx: torch.Tensor) -> torch.Tensor:
    """`(rows, ceil(vocab / BLOCK))`: each row's maximum over each block of `BLOCK` consecutive token ids."""
    rows, vocab = approx.shape
    whole = vocab // BLOCK
    maxima = approx[:, : whole * BLOCK].view(rows, whole, BLOCK).amax(dim=2)
    if whole * BLOCK == vocab:
        return maxima
    return torch.cat([maxima, approx[:, whole * BLOCK :].amax(dim=1, keepdim=True)], dim=1)


def _close_ids(approx: torch.Tensor, floor: torch.Tensor, maxima: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The `(row, token id)` pairs with `approx >= floor[row]`, scanning only the blocks whose maximum reaches the
    floor (a full compare-and-nonzero over the vocabulary costs as much as a third of the product)."""
    block_rows, blocks = (maxima >= floor[:, None]).nonzero(as_tuple=True)
    ids = (blocks[:, None] * BLOCK + torch.arange(BLOCK)).clamp_max(approx.shape[1] - 1)  # a short last block repeats
    rows = block_rows[:, None].expand_as(ids)
    keep = approx[rows, ids] >= floor[block_rows][:, None]
    return rows[keep], ids[keep]


def _checked_chunk(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    low, low_bias, largest = _low_copy(weight, bias)
    approx = F.linear(h.to(torch.bfloat16), low, low_bias)  # bfloat16 logits
    maxima = _block_maxima(approx)
    top = maxima.amax(dim=1).float()
    floor = top - _window(h, largest, top)
    floor = (floor - floor.abs() * 2 * UNIT_ROUNDOFF).to(torch.bfloat16)  # rounded down, never up
    rows, ids = _close_ids(approx, floor, maxima)
    union = torch.unique(ids)  # sorted ascending: ties go to the smallest id
    close = torch.zeros(h.shape[0], union.numel(), dtype=torch.bool)
    close[rows, torch.searchsorted(union, ids)] = True
    exact = F.linear(h, weight[union], None if bias is None else bias[union])
    return union[exact.masked_fill(~close, float("-inf")).argmax(dim=1)]


def _checked(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([_checked_chunk(chunk, weight, bias) for chunk in h.split(MAX_ROWS)])  # direct callers too


FORMS = {"plain": _plain, "checked": _checked}


def applies(h: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether [`argmax_product`] may take the checked route: 2-D float32 rows and a large float32 CPU weight."""
    return (
        h.dim() == 2
        and h.shape[0] > 0
        and h.dtype == weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.numel() >= MIN_ELEMENTS
    )


def _bucket(rows: int) -> int:
    return 1 << max(0, rows - 1).bit_length()


@torch.no_grad()
def argmax_product(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    `F.linear(h, weight, bias).argmax(-1)` without the float32 logits where a checked bfloat16 product is faster on
    this CPU (see the module docstring); the same ids either way.

    Args:
        h (`torch.Tensor`): `(rows, hidden)` hidden states.
        weight (`torch.Tensor`): `(vocab, hidden)` output embeddings.
        bias (`torch.Tensor`, *optional*): `(vocab,)`.

    Returns:
        `torch.LongTensor` of shape `(rows,)`.
    """
    if h.shape[0] > MAX_ROWS:  # bounded memory: at most MAX_ROWS rows of logits at a time, whatever the route
        return torch.cat([argmax_product(chunk, weight, bias) for chunk in h.split(MAX_ROWS)])
    if not (_STATE["enabled"] and applies(h, weight)):
        return F.linear(h, weight, bias).argmax(dim=-1)
    key = (_bucket(h.shape[0]), tuple(weight.shape), torch.get_num_threads())
    name = _CHOICES.get(key)
    if name is not None:
        return FORMS[name](h, weight, bias)
    _low_copy(weight, bias)  # not timed: made once per weight
    best, out = dict.fromkeys(FORMS, float("inf")), None
    for _ in range(2):
        for form, fn in FORMS.items():
            start = time.perf_counter()
            result = fn(h, weight, bias)
            best[form] = min(best[form], time.perf_counter() - start)
            out = result if out is None else out
    _CHOICES[key] = "checked" if best["checked"] * MARGIN < best["plain"] else "plain"
    return out


@contextmanager
def plain_products() -> Iterator[None]:
    """Inside the block every [`argmax_product`] is the plain float32 product (the baseline of a benchmark)."""
    previous, _STATE["enabled"] = _STATE["enabled"], False
    try:
        yield
    finally:
        _STATE["enabled"] = previous


def chosen_routes() -> dict[tuple, str]:
    """The routes chosen so far in this process: `{(row bucket, weight shape, threads): "plain" | "checked"}`."""
    return dict(_CHOICES)


def reset(routes: bool = True, copies: bool = True) -> None:
    """Forget the chosen routes and/or the bfloat16 copies."""
    if routes:
        _CHOICES.clear()
    if copies:
        clear_copies()
