"""`Edit`: an edit applied to a LIME model's layers, that can be reverted, stacked, merged and exported.

An edit never touches the base weights while it is applied: each edited layer adds `x @ A.T @ B.T` (that is
`ΔW = B @ A` in `nn.Linear` orientation) to its output. Reverting removes that term, which restores the model bit
for bit; merging folds `ΔW` into the weights.

An edit's state is what its layers hold, whoever changed them (`Edit.revert`, `LimeModel.revert_all`, PEFT's
`merge_adapter` / `unmerge_adapter`):

| state | `apply()` | `revert()` | `merge()` | `to_lora()` |
| --- | --- | --- | --- | --- |
| `"created"` (computed, never applied) | applies | no-op | `ValueError` | `ValueError` |
| `"applied"` | no-op | removes it, bit for bit | folds it into the weights | exports |
| `"merged"` | `ValueError` | subtracts it (up to rounding) | no-op | exports |
| `"reverted"` | applies it again | no-op | `ValueError` | `ValueError` |

A refused operation changes nothing: merging or exporting an edit the model no longer holds would write an update
that is not there.
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
STATES = ("created", "applied", "merged", "reverted")
LIVE_STATES = ("applied", "merged")  # the model holds the edit's ΔW: it can be merged (if applied) and exported


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
        `merge_adapter()`/`unmerge_adapter()` and `LimeModel.revert_all()` are reflected here (an edit that any of
        its layers no longer holds is `"reverted"`)."""
        if self._state == "applied" and self.deltas:
            layers = [self._layers[name] for name in self.deltas]
            if any(self.id in layer.merged_edit_ids for layer in layers):
                return "merged"
            if not all(self.id in layer.applied_edit_ids for layer in layers):
                return "reverted"  # removed behind our back (revert_all)
        return self._state

    @property
    def is_applied(self) -> bool:
        return self.state == "applied"

    def _require_state(self, action: str, allowed: tuple[str, ...]) -> str:
        """The current state, or a `ValueError` (nothing changed) when `action` is not allowed in it."""
        state = self.state
        if state not in allowed:
            raise ValueError(refusal(f"edit {self.id}", action, state, allowed))
        return state

    def apply(self) -> Edit:
        """Add the edit to its layers' outputs (no weight is modified, nothing is copied). A reverted edit is applied
        again (the same `ΔW`); an applied one is left as it is.

        Raises:
            ValueError: the edit is merged into the weights (applying it again would add it twice).
        """
        state = self._require_state("apply", ("created", "applied", "reverted"))
        if state == "applied":
            return self
        for name, delta in self.deltas.items():
            self._layers[name].add_delta(self.id, delta)
        self._state = "applied"
        return self

    def revert(self) -> Edit:
        """Remove the edit. For an applied edit the model is restored bit for bit; a merged one (by `merge()` or
        PEFT's `merge_adapter()`) is subtracted from the weights, exact up to floating-point rounding. Reverting an
        edit that is not applied (already reverted, by `revert()` or `revert_all()`, or never applied) is a no-op:
        `revert()` is idempotent."""
        state = self.state
        if state == "created":
            return self
        if state == "merged":
            warnings.warn(
                "Reverting a merged edit subtracts ΔW from the weights; floating-point rounding means the weights "
                "may differ from the originals in the last bits.",
                stacklevel=2,
            )
            for name in self.deltas:
                self._layers[name].forget_merged(self.id)
            self._add_to_weights(sign=-1.0)
        else:  # applied, or reverted behind our back: drop whatever a layer may still hold
            for name in self.deltas:
                self._layers[name].remove_delta(self.id)
        self._state = "reverted"
        return self

    def merge(self) -> Edit:
        """Fold `ΔW` into the base weights (permanent; `revert` afterwards is only approximate).

        Raises:
            ValueError: the edit is not applied (reverted by `revert()` or `revert_all()`, or never applied): the
                model does not hold it, so there is nothing to merge. Nothing is changed; `apply()` it first.
        """
        state = self._require_state("merge", ("applied", "merged"))
        if state == "merged":
            return self
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

        Raises:
            ValueError: this edit (or one of `edits`) is not applied or merged: the model does not hold it, so it is
                not exported (nothing is written).
        """
        from ..lora_export import export_edits_as_lora

        self._require_state("export", LIVE_STATES)
        return export_edits_as_lora([self, *(edits or [])], path, base_model_name_or_path, revision=revision)

    def num_parameters(self) -> int:
        """Number of stored numbers (sum of the factors' sizes)."""
        return sum(d.B.numel() + (0 if d.A is None else d.A.numel()) for d in self.deltas.values())

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._state == "applied" and self.state != "reverted":  # applied by us (PEFT may have merged it since)
            self.revert()


def refusal(what: str, action: str, state: str, allowed: Sequence[str]) -> str:
    """The message of a refused `action` on an edit (or a group of edits) in `state`."""
    why = {
        "reverted": "it was reverted (by `revert()` or `revert_all()`), so the model does not hold it",
        "created": "it was never applied, so the model does not hold it",
        "merged": "it is merged into the weights",
    }.get(state, f"it is {state}")
    hint = {"reverted": " Call `apply()` first to apply it again.", "created": " Call `apply()` first."}.get(state, "")
    return (
        f"Cannot {action} {what}: {why}. {action.capitalize()} is allowed for {_one_of(allowed)} edits only "
        f"(the state is {state!r}); nothing was changed.{hint}"
    )


def _one_of(words: Sequence[str]) -> str:
    """`"a"`, `"a or b"`, `"a, b or c"`."""
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
