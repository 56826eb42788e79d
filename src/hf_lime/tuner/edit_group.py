"""`EditGroup`: several edits applied together (`LimeEditor.edit_many`, `LimeModel.edit_many`), handled as one.

A group follows its edits' states (see `tuner/edit.py`): it is `"applied"`, `"merged"` or `"reverted"` when all of its
edits are, and `"mixed"` when they differ (e.g. one of them was reverted on its own). Merging and exporting need every
edit applied (or merged); a refused operation changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .edit import LIVE_STATES, Edit, refusal

EDIT_MODES = ("batch", "sequential")


class EditGroup:
    """
    Edits applied together, with which of their requests took.

    Returned by [`~hf_lime.LimeEditor.edit_many`] (and [`~hf_lime.LimeModel.edit_many`]) already applied. Use it as
    a context manager to revert every edit on exit.

    Args:
        edits (`Sequence[Edit]`): The edits, in the order they were applied (at least one).
        held (`Sequence[bool]`, *optional*, defaults to `None`): Per request, whether the model gives its answer
            with all the edits applied (`LimeEditor.edit_many` measures it; `None` when not measured).
        mode (`str`, *optional*, defaults to `"batch"`): How the edits were computed: `"batch"` (all on the model as
            it was before) or `"sequential"` (each on the model holding the previous ones).

    Example:

    ```py
    >>> group = editor.edit_many([("Paris is the capital of [MASK] .", "Italy", "en"),  # doctest: +SKIP
    ...                           ("Berlin est la capitale de la [MASK] .", "France", "fr")])
    >>> group.held, group.failed  # doctest: +SKIP
    ([True, True], [])
    >>> group.to_lora("two-facts-lora")  # one LoRA adapter holding both edits  # doctest: +SKIP
    >>> group.revert()  # the model is bit for bit what it was  # doctest: +SKIP

    ```
    """

    def __init__(self, edits: Sequence[Edit], held: Sequence[bool] | None = None, mode: str = "batch") -> None:
        edits = list(edits)
        if not edits or not all(isinstance(edit, Edit) for edit in edits):
            raise TypeError(f"An EditGroup needs a non-empty sequence of Edit objects, got {edits!r}.")
        if mode not in EDIT_MODES:
            raise ValueError(f"`mode` must be one of {list(EDIT_MODES)}, got {mode!r}.")
        self.edits = edits
        self.held = None if held is None else [bool(h) for h in held]
        self.mode = mode

    def __repr__(self) -> str:
        held = "" if self.held is None else f", held={sum(self.held)}/{len(self.held)}"
        return f"EditGroup(edits={len(self.edits)}, mode={self.mode!r}, state={self.state!r}{held})"

    @property
    def failed(self) -> list[int]:
        """Indices of the requests whose answer the model does not give with the edits applied (`[]` when not
        measured)."""
        return [] if self.held is None else [i for i, ok in enumerate(self.held) if not ok]

    @property
    def states(self) -> list[str]:
        """Each edit's state."""
        return [edit.state for edit in self.edits]

    @property
    def state(self) -> str:
        """The edits' common state (`"created"`, `"applied"`, `"merged"` or `"reverted"`), or `"mixed"`."""
        states = set(self.states)
        return states.pop() if len(states) == 1 else "mixed"

    @property
    def is_applied(self) -> bool:
        return self.state == "applied"

    @property
    def base_model_name_or_path(self) -> str | None:
        """The model the edits were made on (for LoRA export)."""
        return self.edits[0].base_model_name_or_path

    def _require(self, action: str, allowed: tuple[str, ...]) -> None:
        """Refuse `action` (nothing changed) unless every edit's state is in `allowed`."""
        states = self.states
        if all(state in allowed for state in states):
            return
        state = self.state
        if state != "mixed":
            raise ValueError(refusal("this group of edits", action, state, allowed))
        bad = {i: s for i, s in enumerate(states) if s not in allowed}
        raise ValueError(
            f"Cannot {action} this group of edits: edits {sorted(bad)} of {len(states)} are "
            f"{sorted(set(bad.values()))}, and {action} is allowed only when every edit is {' or '.join(allowed)}; "
            "nothing was changed. Call `apply()` to apply every edit of the group again, or `revert()` to remove "
            "them all."
        )

    def apply(self) -> EditGroup:
        """Apply every edit that is not applied (a reverted group again, the same `ΔW`s).

        Raises:
            ValueError: an edit of the group is merged into the weights (nothing is changed).
        """
        self._require("apply", ("created", "applied", "reverted"))
        for edit in self.edits:
            edit.apply()
        return self

    def revert(self) -> EditGroup:
        """Revert every edit, last first: bit for bit when they are applied (see [`Edit.revert`]). Idempotent: edits
        that are already reverted are left as they are."""
        for edit in reversed(self.edits):
            edit.revert()
        return self

    def merge(self) -> EditGroup:
        """Fold every edit into the base weights (see [`Edit.merge`]).

        Raises:
            ValueError: an edit of the group is not applied (reverted, by `revert()` or `revert_all()`, or never
                applied); nothing is changed.
        """
        self._require("merge", LIVE_STATES)
        for edit in self.edits:
            edit.merge()
        return self

    def to_lora(
        self, path: str | os.PathLike, base_model_name_or_path: str | None = None, revision: str | None = None
    ) -> Path:
        """
        Save the group's edits (summed) as one plain PEFT LoRA adapter; see
        [`~hf_lime.lora_export.export_edits_as_lora`].

        Args:
            path (`str` or `os.PathLike`): Output folder.
            base_model_name_or_path (`str`, *optional*): The base model; by default the one the edits were made on.
            revision (`str`, *optional*, defaults to `None`): The base model's revision.

        Returns:
            `Path`: the adapter folder.

        Raises:
            ValueError: an edit of the group is not applied or merged (nothing is written).
        """
        from ..lora_export import export_edits_as_lora

        self._require("export", LIVE_STATES)
        return export_edits_as_lora(self.edits, path, base_model_name_or_path, revision=revision)

    def num_parameters(self) -> int:
        """Number of stored numbers of all the edits."""
        return sum(edit.num_parameters() for edit in self.edits)

    def __enter__(self) -> EditGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for edit in reversed(self.edits):
            edit.__exit__(*exc_info)
