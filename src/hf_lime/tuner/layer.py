"""`LimeLayer`: wraps an edited `nn.Linear` / `Conv1D`, captures what editors need, and adds edit deltas."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..deltas import LayerDelta, joined


@dataclass
class LayerCapture:
    """One forward call of an edited layer: its input (detached) and its output (in the autograd graph)."""

    inputs: torch.Tensor
    outputs: torch.Tensor


class LimeLayer(nn.Module, BaseTunerLayer):
    """
    An edited layer. It holds no trainable weights of its own (editor networks and masks live on the tuner); it

    - records its input and output while an edit is being computed (`capture()`), so the editor can get the layer
      input `x` and the gradient at the layer output `delta` without stashing tensors on parameters;
    - adds `x @ A.T @ B.T` for each applied edit and for the differentiable deltas used in training;
    - merges a dense update into (or out of) its base weight.

    Args:
        base_layer (`nn.Linear` or `Conv1D`): The wrapped layer.
        adapter_name (`str`): Name of the adapter.
        fan_in_fan_out (`bool`, *optional*, defaults to `False`): Whether the base weight is `(d_in, d_out)`.
    """

    adapter_layer_names: tuple[str, ...] = ("lime_marker",)
    other_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, fan_in_fan_out: bool = False) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = fan_in_fan_out or isinstance(base_layer, Conv1D)
        self.in_features, self.out_features = _in_out_features(base_layer)
        # PEFT bookkeeping: an (empty) per-adapter entry so that adapter names can be listed on the layer.
        self.lime_marker = nn.ModuleDict({adapter_name: nn.Identity()})
        self._active_adapter = adapter_name
        self.merged_adapters: list[str] = []
        self._applied: dict[int, LayerDelta] = {}
        self._applied_sum: LayerDelta | None = None  # every applied edit as one update, until they change
        self._merged: dict[int, LayerDelta] = {}  # folded into the weight by PEFT's merge_adapter()
        self._functional: LayerDelta | None = None
        self._captures: list[LayerCapture] | None = None

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        applied = self._applied_update()
        if applied is not None:
            result = result + applied.apply_to(x)
        if self._functional is not None:
            result = result + self._functional.apply_to(x)
        if self._captures is not None:
            if not result.requires_grad:
                result = result.detach().requires_grad_(True)
            self._captures.append(LayerCapture(inputs=x.detach(), outputs=result))
        return result

    # ----------------------------------------------------------------------------------------------- capture
    @contextmanager
    def capture(self):
        """Record `(input, output)` of every forward call inside the block; yields the list being filled."""
        self._captures = []
        try:
            yield self._captures
        finally:
            self._captures = None

    # ----------------------------------------------------------------------------------------------- deltas
    def add_delta(self, edit_id: int, delta: LayerDelta) -> None:
        self._check_delta(delta)
        self._applied[edit_id] = delta.detach().compact()  # a high-rank batch is applied as one matrix
        self._applied_sum = None

    def remove_delta(self, edit_id: int) -> None:
        self._applied.pop(edit_id, None)
        self._applied_sum = None

    def _applied_update(self) -> LayerDelta | None:
        """Every applied edit as one update, made once per change of the applied edits: one edit as it is, several
        joined (`hf_lime.deltas.joined`) and then in the cheaper form to apply (`LayerDelta.compact`), so a layer
        holding a hundred stacked edits runs one update per forward, not a hundred."""
        if self._applied_sum is None and self._applied:
            deltas = list(self._applied.values())
            self._applied_sum = deltas[0] if len(deltas) == 1 else joined(deltas).compact()
        return self._applied_sum

    @property
    def applied_edit_ids(self) -> list[int]:
        return list(self._applied)

    @property
    def merged_edit_ids(self) -> list[int]:
        """Edits folded into the weight by PEFT's `merge_adapter()` (`unmerge_adapter()` takes them out again)."""
        return list(self._merged)

    def forget_merged(self, edit_id: int) -> LayerDelta | None:
        """Stop tracking a merged edit (its `Edit` subtracts it from the weight itself); its delta, or `None`."""
        return self._merged.pop(edit_id, None)

    @contextmanager
    def functional_delta(self, delta: LayerDelta | None):
        """Add a (differentiable) delta to the output inside the block; the base layer is not modified."""
        if delta is not None:
            self._check_delta(delta)
        previous, self._functional = self._functional, delta
        try:
            yield
        finally:
            self._functional = previous

    def _check_delta(self, delta: LayerDelta) -> None:
        shape = delta.dense().shape if delta.A is None else (delta.B.shape[0], delta.A.shape[1])
        if tuple(shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"Delta of shape {tuple(shape)} does not fit a layer of shape {(self.out_features, self.in_features)}."
            )

    @torch.no_grad()
    def add_to_weight(self, dense: torch.Tensor, sign: float = 1.0) -> None:
        """Add `sign * dense` (in `nn.Linear` orientation) to the base weight, in place."""
        weight = self.get_base_layer().weight
        update = dense.T if self.fan_in_fan_out else dense
        weight.add_(update.to(weight.dtype), alpha=sign)

    def linear_weight(self) -> torch.Tensor:
        """The base weight in `nn.Linear` orientation `(d_out, d_in)` (a view, not a copy)."""
        weight = self.get_base_layer().weight
        return weight.T if self.fan_in_fan_out else weight

    # ----------------------------------------------------------------------------------------------- PEFT API
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """PEFT's `merge_adapter()`: fold the applied edits into the base weight; `unmerge()` takes them out again.
        Their `Edit` objects see it (`edit.state == "merged"`)."""
        for edit_id in list(self._applied):
            delta = self._applied.pop(edit_id)
            self.add_to_weight(delta.dense())
            self._merged[edit_id] = delta
        self._applied_sum = None
        if self._merged:
            self.merged_adapters = [self.active_adapter] if isinstance(self.active_adapter, str) else []

    def unmerge(self) -> None:
        """PEFT's `unmerge_adapter()`: subtract the edits `merge()` folded in and apply them again (the weight comes
        back up to floating-point rounding)."""
        for edit_id in list(self._merged):
            delta = self._merged.pop(edit_id)
            self.add_to_weight(delta.dense(), sign=-1.0)
            self._applied[edit_id] = delta
        self._applied_sum = None
        self.merged_adapters = []

    def __repr__(self) -> str:
        return f"lime.{super().__repr__()}"


def _in_out_features(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape
        return d_in, d_out
    raise TypeError(
        f"LIME can edit `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` layers, got {type(layer).__name__}."
    )
