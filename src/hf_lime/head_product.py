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
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

MIN_ELEMENTS = 1 << 24  # 16.7M entries (64 MB in float32): a 250k × 384 or 119k × 768 vocabulary matrix qualifies
MAX_ROWS = 32
MARGIN = 1.2
PAD_TO = 4
ROUNDS = 2

# (direction, row class, weight shape, dtype, threads) → the name of the chosen form
_CHOICES: dict[tuple, str] = {}


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
            grad_h = _choose("backward", BACKWARDS, grad.shape[0], weight, grad.contiguous(), weight)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.T @ h
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_h, grad_weight, grad_bias


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
    return _HeadProduct.apply(h, weight, bias)


def chosen_forms() -> dict[tuple, str]:
    """The choices made so far in this process: `{(direction, row class, weight shape, dtype, threads): form}`."""
    return dict(_CHOICES)


def reset_choices() -> None:
    """Forget the choices (the next product with each row count times the forms again)."""
    _CHOICES.clear()
