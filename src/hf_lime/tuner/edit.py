"""`Edit`: an edit applied to a LIME model's layers, that can be reverted, stacked, merged and exported.

An edit never touches the base weights while it is applied: each edited layer adds `x @ A.T @ B.T` (that is
`ΔW = B @ A` in `nn.Linear` orientation) to its output. Reverting removes that term, which restores the model bit
for bit; merging folds `ΔW` into the weights.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..deltas import EditInfo, LayerDelta

if TYPE_CHECKING:
    from .layer import LimeLayer

_EDIT_IDS = itertools.count()


class Edit:
    """
    An applied edit: per-layer low-rank factors plus the layers they live on.

    Returned by `model.edit(...)` already applied. Use it as a context manager to revert on exit.

    Example:

    ```py
    >>> edit = model.edit(batch, language="fr")  # doctest: +SKIP
    >>> edit.revert()                             # base weights bit-identical again  # doctest: +SKIP
    >>> with model.edit(batch, language="de"):    # reverted when the block ends  # doctest: +SKIP
    ...     outputs = model(**other_batch)

    ```
    """

    def __init__(
        self,
        deltas: dict[str, LayerDelta],
        layers: dict[str, LimeLayer],
        info: EditInfo | None = None,
        base_model_name_or_path: str | None = None,
    ):
        missing = sorted(set(deltas) - set(layers))
        if missing:
            raise ValueError(f"Edit has deltas for unknown layers {missing}.")
        self.id = next(_EDIT_IDS)
        self.deltas = {name: delta.detach() for name, delta in deltas.items()}
        self._layers = layers
        self.info = info or EditInfo()
        self.base_model_name_or_path = base_model_name_or_path  # the model the edit was made on (for LoRA export)
        self._state = "created"

    def __repr__(self) -> str:
        ranks = sorted({d.rank for d in self.deltas.values()})
        return f"Edit(id={self.id}, layers={len(self.deltas)}, ranks={ranks}, state={self.state!r})"

    @property
    def state(self) -> str:
        """`"created"`, `"applied"`, `"merged"` or `"reverted"`, as the layers see it: PEFT's
        `merge_adapter()`/`unmerge_adapter()` and `revert_all()` are reflected here."""
        if self._state == "applied":
            layers = [self._layers[name] for name in self.deltas]
            if any(self.id in layer.merged_edit_ids for layer in layers):
                return "merged"
            if not any(self.id in layer.applied_edit_ids for layer in layers):
                return "reverted"  # removed behind our back (revert_all)
        return self._state

    @property
    def is_applied(self) -> bool:
        return self.state == "applied"

    def apply(self) -> Edit:
        """Add the edit to its layers' outputs (no weight is modified, nothing is copied)."""
        state = self.state
        if state == "applied":
            return self
        if state == "merged":
            raise ValueError("This edit is merged into the weights; it cannot be applied again.")
        for name, delta in self.deltas.items():
            self._layers[name].add_delta(self.id, delta)
        self._state = "applied"
        return self

    def revert(self) -> Edit:
        """Remove the edit. For an applied edit the model is restored bit for bit; a merged one (by `merge()` or
        PEFT's `merge_adapter()`) is subtracted from the weights, exact up to floating-point rounding."""
        state = self.state
        if state == "merged":
            warnings.warn(
                "Reverting a merged edit subtracts ΔW from the weights; floating-point rounding means the weights "
                "may differ from the originals in the last bits.",
                stacklevel=2,
            )
            for name in self.deltas:
                self._layers[name].forget_merged(self.id)
            self._add_to_weights(sign=-1.0)
        elif state == "applied":
            for name in self.deltas:
                self._layers[name].remove_delta(self.id)
        self._state = "reverted"
        return self

    def merge(self) -> Edit:
        """Fold `ΔW` into the base weights (permanent; `revert` afterwards is only approximate)."""
        state = self.state
        if state == "merged":
            return self
        if state == "applied":
            for name in self.deltas:
                self._layers[name].remove_delta(self.id)
        self._add_to_weights(sign=1.0)
        self._state = "merged"
        return self

    def fan_in_fan_out(self, key: str) -> bool:
        """Whether the edited layer `key` stores its weight as `(fan_in, fan_out)` (GPT-2's `Conv1D`)."""
        return bool(self._layers[key].fan_in_fan_out)

    def _add_to_weights(self, sign: float) -> None:
        for name, delta in self.deltas.items():
            self._layers[name].add_to_weight(delta.dense(), sign)

    def to_lora(
        self,
        path: str | os.PathLike,
        base_model_name_or_path: str | None = None,
        edits: Sequence[Edit] | None = None,
        revision: str | None = None,
    ) -> Path:
        """
        Save this edit (plus `edits`, stacked after it) as a plain PEFT LoRA adapter that `peft` applies without
        hf_lime. See [`~hf_lime.lora_export.export_edits_as_lora`].

        Args:
            path (`str` or `os.PathLike`): Output folder.
            base_model_name_or_path (`str`, *optional*): Hub id or folder of the base model the edit was made on;
                by default the name the model knows itself by (`Edit.base_model_name_or_path`).
            edits (`Sequence[Edit]`, *optional*, defaults to `None`): More edits to stack with this one.
            revision (`str`, *optional*, defaults to `None`): The base model's revision.

        Returns:
            `Path`: the adapter folder.
        """
        from ..lora_export import export_edits_as_lora

        return export_edits_as_lora([self, *(edits or [])], path, base_model_name_or_path, revision=revision)

    def num_parameters(self) -> int:
        """Number of stored numbers (sum of the factors' sizes)."""
        return sum(d.B.numel() + (0 if d.A is None else d.A.numel()) for d in self.deltas.values())

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._state == "applied" and self.state != "reverted":  # applied by us (PEFT may have merged it since)
            self.revert()
