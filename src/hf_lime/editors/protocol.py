"""`EditorContext`: the editors' view of the model, defined on the editors' side.

`hf_lime.tuner.context.EditContext` implements it; an editor relies on nothing else of the model. Keeping the view
here means `editors/` imports nothing from `tuner/` (which builds the editors).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn

from ..deltas import LayerDelta


class CapturedEdit(Protocol):
    """What `EditorContext.capture()` returns (per edited layer: tokens' inputs and output gradients)."""

    inputs: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    token_lang_ids: torch.Tensor | None
    token_rows: torch.Tensor
    loss: float


class LayerTokens(Protocol):
    """One edited layer's tokens, masked: `x` `(n, d_in)`, `delta` `(n, d_out)`, their batch `rows` `(n,)`."""

    x: torch.Tensor
    delta: torch.Tensor
    rows: torch.Tensor


class EditorContext(Protocol):
    """The model-side services an editor uses to compute one edit."""

    batch: dict[str, torch.Tensor]
    retain_batch: Any

    @property
    def input_embeddings(self) -> nn.Module:
        """The base model's input embedding layer."""

    def capture(self) -> CapturedEdit:
        """Run the base model on the edit batch once; each edited layer's inputs and loss gradients (cached)."""

    def masked_inputs(self, key: str, d_in: int) -> LayerTokens:
        """Layer `key`'s tokens with a non-zero input and gradient, re-weighted by the editing language's mask."""

    def edit_lr(self, key: str) -> torch.Tensor:
        """The learned step size of layer `key`."""

    def forward(self, deltas: dict[str, LayerDelta] | None = None, batch: dict[str, Any] | None = None) -> Any:
        """Model outputs on `batch` (default: the edit batch) with `deltas` added; nothing is modified."""

    def edit_loss(self, deltas: dict[str, LayerDelta] | None = None) -> tuple[torch.Tensor, bool]:
        """The edit batch's loss with `deltas` added, and whether every target already is the model's argmax."""

    def recording(self) -> AbstractContextManager[dict[str, list[Any]]]:
        """Inside the block, every edited layer records `(inputs, outputs)` of its calls (by layer key)."""
