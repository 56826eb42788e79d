"""The product of a few hidden states with a large output-embedding matrix, in the faster form for this CPU.

At the target positions (`hf_lime.head`) the vocabulary product is `h Wᵀ + b` with a handful of rows in `h` and a
`W` of 250k × 384 (multilingual-e5) or 119k × 768 (mBERT): its time is the time to read `W`. How often the CPU's
BLAS reads `W` for a few rows depends on the CPU. Measured on one thread (docs/benchmarks.md): on an AMD EPYC (AVX2),
`F.linear` with 2 rows takes 192 ms and with 3 rows 286 ms, while the same logits computed as `(W hᵀ)ᵀ` take 71 and
93 ms; on an Intel Xeon with AMX it is the other way round for 1–3 rows (35–42 ms against 73–78 ms). No fixed rule
is right on both, so the first product with a given class of row counts (per weight shape, dtype and thread count)
times both forms (`ROUNDS` times each, interleaved) and keeps the faster. The classes are 1, 2, 3 and 4 rows each
(where the forms differ most) and then 5–8, 9–16, 17–32, so that a training run meets seven classes, not thirty-two
row counts to time. The backward's product `g W` is chosen the same
way, between the plain product and one with the rows of `g` padded by zeros to a multiple of `PAD_TO`. An
alternative is kept only when it is at least `MARGIN` times faster, so that near ties resolve to the plain form and
repeated runs make the same choice. The forms give the same values up to float32 rounding.

Only CPU products with a large `W` (at least `MIN_ELEMENTS` entries) and few rows (at most `MAX_ROWS`) are tuned;
everything else — GPUs, tiny test models, long batches, a double backward — is the plain product.

Inside `low_precision(torch.bfloat16)` (what `LimeTrainingArguments(head_dtype="bfloat16")` sets around a training
episode) the tuned products with a frozen `W` run against a bfloat16 copy of `W` instead (`bfloat16_copy`, made once
per weight): logits `bf16(h) bf16(W)ᵀ + bf16(b)` with float32 sums, returned in `h`'s dtype, and the backward's
`g W` the same way. On CPUs with bfloat16 instructions (AVX512-BF16, AMX) that is 2–3× faster than float32 (the
matrix is half the bytes to read); the values differ by bfloat16 rounding, so it is a training option, never used
to read an answer (`hf_lime.fast_argmax` checks its bfloat16 screen in float32).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

MIN_ELEMENTS = 1 << 24  # 16.7M entries (64 MB in float32): a 250k × 384 or 119k × 768 vocabulary matrix qualifies
MAX_ROWS = 32
MARGIN = 1.2
PAD_TO = 4
ROUNDS = 2

# (direction, row class, weight shape, dtype, threads) → the name of the chosen form
_CHOICES: dict[tuple, str] = {}
# id(weight) → (weakref to it, its data pointer and version and the bias's, (bfloat16 W, bfloat16 b, max row norm))
_COPIES: dict[int, tuple] = {}
_LOW = {"dtype": None}
LOW_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def bfloat16_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """`W` and `b` in bfloat16 and the largest float32 row norm of `W`, made once and kept while `weight` lives and
    neither it nor `bias` has changed in place."""

    def make() -> tuple[torch.Tensor, torch.Tensor | None, float]:
        with torch.no_grad():
            low_bias = None if bias is None else bias.detach().to(torch.bfloat16)
            return weight.detach().to(torch.bfloat16), low_bias, float(weight.detach().norm(dim=1).max())

    return per_weight(_COPIES, weight, bias, make)


def per_weight(store: dict, weight: torch.Tensor, bias: torch.Tensor | None, make: Callable[[], Any]) -> Any:
    """`make()` computed once per output layer and kept in `store` while `weight` lives and neither it nor `bias` has
    changed in place (same storage and version); entries of weights that are gone are dropped."""
    stamp = tuple((t.data_ptr(), t._version) if t is not None else None for t in (weight, bias))
    entry = store.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == stamp:
        return entry[2]
    for key in [key for key, value in store.items() if value[0]() is None]:
        del store[key]
    value = make()
    store[id(weight)] = (weakref.ref(weight), stamp, value)
    return value


def clear_copies() -> None:
    """Drop every bfloat16 copy made by `bfloat16_copy` (they are made again on next use)."""
    _COPIES.clear()


def fast_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), where `low_precision` products are faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@contextmanager
def low_precision(dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block, tuned products with a frozen weight run in `dtype` (`torch.bfloat16`; `None`: float32 as
    outside). The choice is made at the forward: a backward run after the block still uses it."""
    if dtype not in (None, torch.bfloat16):
        raise ValueError(f"low_precision supports torch.bfloat16 or None, got {dtype!r}.")
    previous, _LOW["dtype"] = _LOW["dtype"], dtype
    try:
        yield
    finally:
        _LOW["dtype"] = previous


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(h, weight, bias)


def _wide(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`(W hᵀ)ᵀ + b`: `W` as the long left operand."""
    out = weight @ h.T if bias is None else torch.addmm(bias[:, None], weight, h.T)
    return out.T.contiguous()


def _grad_plain(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return grad @ weight


def _grad_padded(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`g W` with the rows of `g` padded by zeros to a multiple of `PAD_TO` (the padding rows are cut off)."""
    rows = grad.shape[0]
    extra = -rows % PAD_TO
    if extra:
        grad = torch.cat([grad, grad.new_zeros(extra, grad.shape[1])])
    return (grad @ weight)[:rows]


FORWARDS: dict[str, Callable] = {"linear": _linear, "wide": _wide}
BACKWARDS: dict[str, Callable] = {"plain": _grad_plain, "padded": _grad_padded}


def _timed(fn: Callable, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def row_class(rows: int) -> int:
    """The class of row counts that shares one choice: the count itself up to 4, then the next power of two."""
    return rows if rows <= 4 else 1 << (rows - 1).bit_length()


def _choose(direction: str, forms: dict[str, Callable], rows: int, weight: torch.Tensor, *args) -> torch.Tensor:
    """Run the chosen form of `direction` for these rows. The first time, time every form `ROUNDS` times,
    interleaved (the default, the first of `forms`, runs first and its output is returned), and keep an alternative
    only if its best time beats the default's best by `MARGIN`."""
    key = (direction, row_class(rows), tuple(weight.shape), weight.dtype, torch.get_num_threads())
    name = _CHOICES.get(key)
    if name is not None:
        return forms[name](*args)
    best = dict.fromkeys(forms, float("inf"))
    out = None
    with torch.no_grad():
        for _ in range(ROUNDS):
            for form, fn in forms.items():
                seconds, result = _timed(fn, *args)
                best[form] = min(best[form], seconds)
                out = result if out is None else out
    default = next(iter(forms))
    fastest = min(best, key=best.get)
    _CHOICES[key] = fastest if best[fastest] * MARGIN < best[default] else default
    return out


def tuned(weight: torch.Tensor, rows: int) -> bool:
    """Whether the product of `rows` rows with `weight` is tuned (a large CPU weight and few rows)."""
    return weight.device.type == "cpu" and weight.numel() >= MIN_ELEMENTS and 0 < rows <= MAX_ROWS


class _HeadProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias):  # noqa: D102 (autograd's signature)
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return _choose("forward", FORWARDS, h.shape[0], weight, h, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        h, weight = ctx.saved_tensors
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0] and torch.is_grad_enabled():  # a double backward: the plain, recorded product
            grad_h = grad @ weight
        elif ctx.needs_input_grad[0]:
            grad_h = _live_rows_product(grad, weight)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.T @ h
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_h, grad_weight, grad_bias


class _LowHeadProduct(torch.autograd.Function):
    """`F.linear(h, W, b)` against the bfloat16 copy of a frozen `W` (gradient for `h` only)."""

    @staticmethod
    def forward(ctx, h, weight, bias):  # noqa: D102
        low_weight, low_bias, _ = bfloat16_copy(weight, bias)
        ctx.save_for_backward(low_weight)
        return F.linear(h.to(torch.bfloat16), low_weight, low_bias).to(h.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        (low_weight,) = ctx.saved_tensors
        return _live_rows_product(grad.to(torch.bfloat16), low_weight).to(grad.dtype), None, None


def _live_rows_product(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`g W` computed for the rows of `g` that are not all zero (the others' rows of the result are exactly zero):
    rows forwarded outside the loss, such as a training episode's retain rows riding along in the edit's capture,
    cost nothing in the backward."""
    live = grad.ne(0).any(dim=1)
    if bool(live.all()):
        return _choose("backward", BACKWARDS, grad.shape[0], weight, grad.contiguous(), weight)
    out = grad.new_zeros(grad.shape[0], weight.shape[1])
    rows = live.nonzero().squeeze(1)
    if rows.numel():
        out[rows] = _choose("backward", BACKWARDS, rows.numel(), weight, grad[rows].contiguous(), weight)
    return out


def head_product(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    `F.linear(h, weight, bias)` for the hidden states `h` (rows × hidden) at the target positions, in the faster form
    for this CPU when `weight` is a large vocabulary matrix and `h` has few rows (see the module docstring).

    Args:
        h (`torch.Tensor`): `(rows, hidden)`.
        weight (`torch.Tensor`): `(vocab, hidden)`.
        bias (`torch.Tensor`, *optional*): `(vocab,)`.

    Returns:
        `torch.Tensor`: `(rows, vocab)` logits, contiguous.
    """
    if h.dim() != 2 or not tuned(weight, h.shape[0]) or h.dtype != weight.dtype:
        return F.linear(h, weight, bias)
    if _LOW["dtype"] is not None and not weight.requires_grad and (bias is None or not bias.requires_grad):
        return _LowHeadProduct.apply(h, weight, bias)
    return _HeadProduct.apply(h, weight, bias)


def chosen_forms() -> dict[tuple, str]:
    """The choices made so far in this process: `{(direction, row class, weight shape, dtype, threads): form}`."""
    return dict(_CHOICES)


def reset_choices() -> None:
    """Forget the choices (the next product with each row count times the forms again)."""
    _CHOICES.clear()
