"""The low-level update an editor produces: `LayerDelta` (`ΔW = B @ A` of one layer) and `EditInfo`.

This module is at the bottom of the package: editors, layers and edits all use it, and it imports nothing of hf_lime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerDelta:
    """
    `ΔW = B @ A` for one layer, in `nn.Linear` orientation `(d_out, d_in)`.

    Args:
        B (`torch.Tensor`): `(d_out, r)` factor, or the dense `(d_out, d_in)` update when `A` is `None`.
        A (`torch.Tensor`, *optional*): `(r, d_in)` factor; `None` for a dense update.
    """

    B: torch.Tensor
    A: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.B.shape[1] if self.A is not None else min(self.B.shape)

    def dense(self) -> torch.Tensor:
        """The full `(d_out, d_in)` update."""
        return self.B if self.A is None else self.B @ self.A

    def apply_to(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ ΔW.T`, computed through the low-rank factors."""
        B = self.B.to(x.dtype)
        if self.A is None:
            return x @ B.T
        return (x @ self.A.to(x.dtype).T) @ B.T

    def compact(self) -> LayerDelta:
        """The cheaper form to apply: the dense update when the factors cost more per input row than the matrix
        (`rank · (d_in + d_out) > d_in · d_out`, e.g. a batch of hundreds of MEND edits), else itself."""
        if self.A is None or self.rank * (self.A.shape[1] + self.B.shape[0]) <= self.A.shape[1] * self.B.shape[0]:
            return self
        return LayerDelta(self.dense())

    def detach(self) -> LayerDelta:
        return LayerDelta(self.B.detach(), None if self.A is None else self.A.detach())

    def to_low_rank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors `(B, A)` of the update; a dense update is factorised exactly by a thin SVD."""
        if self.A is not None:
            return self.B, self.A
        U, S, Vh = torch.linalg.svd(self.B.float(), full_matrices=False)
        keep = S > S.max() * 1e-7 if S.numel() else S > 0
        return (U[:, keep] * S[keep]).to(self.B.dtype), Vh[keep].to(self.B.dtype)


# EditInfo.extra entry: layer key -> (raw inputs of MEND's edit tokens, their rows); read by tuner/merge.py
SOLVE_KEYS = "solve_keys"
# EditInfo.extra entry: layer key -> the same tokens' indices among the edit batch's attended tokens (tuner/refit.py)
SOLVE_POSITIONS = "solve_positions"


def joined(deltas: Sequence[LayerDelta]) -> LayerDelta:
    """The sum of several updates of one layer as one `LayerDelta`: their factors side by side when every one is
    low-rank (the same products, one pair of matrices), else the dense sum."""
    if any(delta.A is None for delta in deltas):
        total = deltas[0].dense()
        for delta in deltas[1:]:
            total = total + delta.dense()
        return LayerDelta(total)
    return LayerDelta(torch.cat([delta.B for delta in deltas], 1), torch.cat([delta.A for delta in deltas]))


@dataclass
class EditInfo:
    """What the editor measured while computing an edit."""

    loss_before: float | None = None
    languages: list[str] = field(default_factory=list)
    steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    passenger_logits: Any = None  # `TargetLogits` of `compute_edit(passenger_inputs=...)`
