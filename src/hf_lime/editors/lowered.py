"""The product `(h Vᵀ) Uᵀ` of a MEND block in bfloat16, with float32 weights, inputs, outputs and gradients.

`torch.autocast` gives the same products but casts every weight again on every forward (autocast's cast cache lives
only as long as its context) and returns the weights' gradients through a cast of its own; on a CPU those casts of
the 1920 × 1920 matrices cost more than the bfloat16 products save. Here the bfloat16 copies of the weights are
kept until the weights change (their version counter moves at every optimizer step or load), and the backward
computes all three gradients from the saved bfloat16 factors in one place. (A weight changed through `.data`
bypasses the version counter; the storage check still catches `param.data = ...`, not in-place writes to `.data`.)
"""

from __future__ import annotations

import torch
from torch import nn

LOW = torch.bfloat16


class _LoweredLowRank(torch.autograd.Function):
    """`(h @ down.T) @ up.T` with bfloat16 products; `down_low`/`up_low` are the weights' bfloat16 copies."""

    @staticmethod
    def forward(ctx, h, down, up, down_low, up_low):  # noqa: D102 (autograd's signature)
        h_low = h.to(LOW)
        z = h_low @ down_low.T
        ctx.save_for_backward(h_low, z, down_low, up_low)
        ctx.dtypes = (h.dtype, down.dtype, up.dtype)
        return (z @ up_low.T).to(h.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        h_low, z, down_low, up_low = ctx.saved_tensors
        h_dtype, down_dtype, up_dtype = ctx.dtypes
        grad_low = grad.to(LOW)
        grad_up = (grad_low.T @ z).to(up_dtype) if ctx.needs_input_grad[2] else None
        grad_z = grad_low @ up_low
        grad_down = (grad_z.T @ h_low).to(down_dtype) if ctx.needs_input_grad[1] else None
        grad_h = (grad_z @ down_low).to(h_dtype) if ctx.needs_input_grad[0] else None
        return grad_h, grad_down, grad_up, None, None


class LoweredWeights:
    """bfloat16 copies of two parameters, made again only when either changes (version, storage or device)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._copies: tuple[torch.Tensor, ...] = ()  # made with the first key

    def get(self, down: nn.Parameter, up: nn.Parameter) -> tuple[torch.Tensor, ...]:
        key = (down._version, up._version, down.data_ptr(), up.data_ptr(), down.device, up.device)
        if key != self._key:  # the first call too: no key yet
            self._copies = (down.detach().to(LOW), up.detach().to(LOW))
            self._key = key
        return self._copies


def lowered_low_rank(h: torch.Tensor, down: nn.Parameter, up: nn.Parameter, cache: LoweredWeights) -> torch.Tensor:
    """`(h @ down.T) @ up.T` with its three matrix products (and their gradients) in bfloat16."""
    down_low, up_low = cache.get(down, up)
    return _LoweredLowRank.apply(h, down, up, down_low, up_low)
