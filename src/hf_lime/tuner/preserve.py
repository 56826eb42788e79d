"""Key moments: what the edited layers usually see, for edits that should leave it alone.

A layer update `ΔW` changes the output of every input `k` by `ΔW k`. [`~hf_lime.tuner.merge.preserve_merge`] fits
the update of many MEND edits so that their own tokens get their change and the keys the model usually sees do not
(MEMIT's idea, with MEND's per-token targets); what the model "usually sees" is summed up, per edited layer, by the
mean second moment `C = E[k kᵀ]` of its raw inputs over the tokens of some text — facts the edits must not touch, or
any text of the model's domain. `C` is `d_in × d_in` whatever the number of tokens, so it is computed once and
reused for any number of edits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from typing import Any

import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@torch.no_grad()
def key_moments(model: Any, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """
    The mean `x xᵀ` of every edited layer's input over the attended tokens of `batches`.

    Args:
        model ([`~hf_lime.tuner.LimeModel`]): The tuner; its edited layers (`lime_layers`) are read, with whatever
            edits are applied now.
        batches (`Iterable[Mapping[str, torch.Tensor]]`): Tokenized batches (`input_ids`, `attention_mask`; other
            keys such as `labels` are ignored).

    Returns:
        `dict[str, torch.Tensor]`: layer key -> `(d_in, d_in)` float64 matrix.

    Raises:
        ValueError: no batch, or batches without a single attended token.

    Example:

    ```python
    >>> batch = tokenizer(texts, padding=True, return_tensors="pt")  # doctest: +SKIP
    >>> moments = key_moments(peft_model.base_model, [batch])  # doctest: +SKIP
    ```
    """
    layers = model.lime_layers
    network = _smallest_network(model.model, layers.values())
    sums: dict[str, torch.Tensor] = {}
    count = 0
    with ExitStack() as stack:
        captures = {key: stack.enter_context(layer.capture()) for key, layer in layers.items()}
        for batch in batches:
            for captured in captures.values():
                captured.clear()
            network(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
            attended = _attended(batch)
            count += int(attended.sum())
            for key, captured in captures.items():
                x = torch.cat([c.inputs[attended] for c in captured]).double()
                sums[key] = x.T @ x if key not in sums else sums[key] + x.T @ x
    if count == 0:
        raise ValueError("`key_moments` needs at least one batch with an attended token.")
    return {key: value / count for key, value in sums.items()}


def _smallest_network(model: torch.nn.Module, layers: Iterable[torch.nn.Module]) -> torch.nn.Module:
    """The backbone (`model.base_model`, e.g. `BertModel` without its vocabulary head) when it holds every edited
    layer, else the whole model."""
    backbone = getattr(model, "base_model", model)
    inside = {id(module) for module in backbone.modules()}
    return backbone if all(id(layer) in inside for layer in layers) else model


def _attended(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
