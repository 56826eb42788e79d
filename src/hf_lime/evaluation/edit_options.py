"""`evaluate_editor(edit_options=...)` for edits fitted against what they should leave alone (`preserve`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def preserve_edit_options(
    model: Any,
    tokenizer: Any,
    task: str,
    rows: Iterable[Mapping[str, Any]],
    weight: float,
    languages: Sequence[str] | None = None,
    max_length: int = 128,
) -> dict[str, Any]:
    """
    The `edit_options` that fit every edit against the key moments of some facts (`combine="solve"`,
    `preserve=`; `hf_lime.tuner.merge.preserve_merge`), e.g. the training split's, so that no evaluated fact is among
    them.

    Args:
        model (`PeftModel`): The LIME model; its edited layers are read as they are now.
        tokenizer: Its tokenizer.
        task (`str`): `"masked_lm"` (fact rows are masked-LM prompts).
        rows (`Iterable[Mapping]`): Fact rows in the common schema; every language's prompt and answer is used
            (`hf_lime.data.items.fact_pairs`).
        weight (`float`): `preserve_weight`.
        languages (`Sequence[str]`, *optional*): Only these languages' prompts.
        max_length (`int`, *optional*, defaults to `128`): Maximum tokens per prompt.

    Returns:
        `dict`: `{"combine": "solve", "preserve": moments, "preserve_weight": weight}`.
    """
    from ..data.items import fact_pairs
    from ..editor import LimeEditor

    facts = fact_pairs(rows, languages)
    moments = LimeEditor(model, tokenizer, task=task).key_moments(facts, max_length=max_length)
    logger.info("preserving the keys of %d prompts (weight %g)", len(facts), weight)
    return {"combine": "solve", "preserve": moments, "preserve_weight": weight}
