"""The one interface every editor implements, and what the adapter hands to it.

An editor turns an edit request into per-layer deltas. It gets an [`EditorContext`] (`editors/protocol.py`; the
tuner's `EditContext` implements it) that can

- `capture()`: run the base model on the edit batch and return, per edited layer, its inputs `x` and the gradient
  `delta` of the edit loss at its output (tokens flattened, padding dropped), with each token's language id;
- `masked_inputs(key, d_in)`: a layer's non-zero tokens re-weighted by the editing language's LiME mask;
- `forward(deltas, batch)` / `edit_loss(deltas)`: run the model with differentiable deltas added (nothing is modified);
- `recording()`: record every edited layer's calls inside a block;
- `edit_lr(key)`: the learned step size of a layer.

Adding an editor means: a module in `editors/`, an entry in `EDITOR_REGISTRY` (`editors/registry.py`), and the name
in `LimeConfig.editor`'s allowed values. Nothing outside `editors/` needs to know about it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..deltas import EditInfo, LayerDelta
from .protocol import EditorContext


@dataclass(frozen=True)
class LayerSpec:
    """An edited layer as editors see it."""

    key: str  # module name with "." replaced by "-" (usable as a ModuleDict key)
    name: str  # module name inside the PEFT model
    d_in: int
    d_out: int


@dataclass
class EditorOutput:
    """What an editor returns: the deltas per layer key, and what it measured."""

    deltas: dict[str, LayerDelta]
    info: EditInfo = field(default_factory=EditInfo)


class EditStepSizes(nn.Module):
    """
    Learned per-layer edit step sizes (MEND's `edit_lrs`), kept positive: the parameter is the log step size.

    MEND learns the raw step sizes, which Adam can push through zero to a negative value — an editor that then
    *ascends* the edit loss on that layer (we saw it happen within 200 steps on a real model). Learning `log(lr)`
    keeps every step size positive and makes the optimizer's steps relative (`edit_lr_learning_rate` ≈ the relative
    change per step).

    Args:
        keys (`list[str]`): Layer keys, in order.
        init (`float`): Initial step size (> 0).
    """

    def __init__(self, keys: list[str], init: float) -> None:
        super().__init__()
        if not init > 0:
            raise ValueError(f"The initial edit step size must be > 0, got {init!r}.")
        self.keys = list(keys)
        self.log_lrs = nn.Parameter(torch.full((len(keys),), math.log(float(init))))

    @property
    def lrs(self) -> torch.Tensor:
        """The current step sizes, one per layer key (detached; the editors use `forward`)."""
        return self.log_lrs.detach().exp()

    @torch.no_grad()
    def fill_(self, value: float) -> EditStepSizes:
        """Set every step size to `value` (`0.0` gives edits that change nothing)."""
        self.log_lrs.fill_(math.log(value) if value > 0 else float("-inf"))
        return self

    def forward(self, key: str) -> torch.Tensor:
        return self.log_lrs[self.keys.index(key)].exp()


class BaseEditor(nn.Module, ABC):
    """
    Base class of editors.

    Args:
        layers (`list[LayerSpec]`): The edited layers.
    """

    #: Whether the editor has parameters that must be trained (by `LimeTrainer`) before it is useful.
    requires_training: ClassVar[bool] = True
    #: Whether the editor's update depends on the LiME masks (`EditorContext.masked_inputs`); masks are created then.
    uses_masks: ClassVar[bool] = True

    def __init__(self, layers: list[LayerSpec]) -> None:
        super().__init__()
        self.layers = list(layers)

    @abstractmethod
    def compute_deltas(self, ctx: EditorContext) -> EditorOutput:
        """Compute the per-layer deltas of one (possibly batched) edit request."""

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}"

    @classmethod
    def model_kwargs(cls, model: nn.Module) -> dict[str, Any]:
        """Constructor arguments read from the base model (e.g. its embedding width); none by default."""
        return {}
