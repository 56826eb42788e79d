"""Checks of user input to `edit`: the batch and the languages. They run before anything is touched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def validate_edit_batch(inputs: Any) -> dict[str, Any]:
    """
    Check an edit batch and return it as a plain dict.

    Args:
        inputs (`Mapping[str, torch.Tensor]`): Model inputs plus `labels`: token labels of the same shape as
            `input_ids` with `-100` except the target positions (masked or causal LM), or one class id per row
            (sequence classification).

    Raises:
        TypeError: `inputs` is not a mapping, or `input_ids`/`labels` are not integer tensors.
        ValueError: `input_ids` or `labels` is missing, a shape does not fit, or a row has no target position.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"Edit inputs must be a mapping of tensors (e.g. a tokenizer's output), got {type(inputs)}.")
    batch = dict(inputs)
    for name in ("input_ids", "labels"):
        if name not in batch:
            raise ValueError(
                f"Edit inputs need `{name}`: pass the tokenized prompt with `labels` marking the new target "
                "(-100 everywhere except the target positions, or a class id per row for classifiers)."
            )
        if not isinstance(batch[name], torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(batch[name]).__name__}.")
        if batch[name].dtype.is_floating_point or batch[name].dtype == torch.bool:
            raise TypeError(f"`{name}` must hold integer ids (torch.long), got dtype {batch[name].dtype}.")
    input_ids, labels = batch["input_ids"], batch["labels"]
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"`input_ids` must have shape (batch, sequence) with both > 0, got {tuple(input_ids.shape)}.")
    mask = batch.get("attention_mask")
    if mask is not None and tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"`attention_mask` shape {tuple(mask.shape)} != `input_ids` shape {tuple(input_ids.shape)}.")
    _check_labels(labels, input_ids)
    return batch


def check_batch_fits_model(batch: dict[str, Any], model_config: Any, num_outputs: int | None) -> None:
    """The edit batch against the model: no longer than its positions, labels inside its vocabulary or classes."""
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "Edits are computed from gradients, which `torch.inference_mode()` forbids: call `edit` outside of it "
            "(`torch.no_grad()` around it is fine)."
        )
    length = batch["input_ids"].shape[1]
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if isinstance(limit, int) and length > limit:
        raise ValueError(
            f"The edit prompt has {length} tokens but the model reads at most {limit}: shorten the prompt/target."
        )
    labels = batch["labels"]
    targets = labels[labels != -100]
    if num_outputs is not None and targets.numel() and int(targets.max()) >= num_outputs:
        raise ValueError(
            f"A label id ({int(targets.max())}) is outside the model's {num_outputs} outputs (vocabulary or classes)."
        )


def _check_labels(labels: torch.Tensor, input_ids: torch.Tensor) -> None:
    if labels.dim() == 1:
        if labels.shape[0] != input_ids.shape[0]:
            raise ValueError(f"Class labels have {labels.shape[0]} entries for a batch of {input_ids.shape[0]} rows.")
        if (labels < 0).any():
            raise ValueError(f"Class labels must be >= 0, got {labels.tolist()}.")
        return
    if tuple(labels.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"Token `labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}."
        )
    empty = [i for i, row in enumerate(labels) if not (row != -100).any()]
    if empty:
        raise ValueError(f"Rows {empty} of `labels` have no target position (all -100): mark the new target's tokens.")


def resolve_language_ids(
    language: str | Sequence[str] | torch.Tensor | None, languages: list[str], batch_size: int
) -> tuple[list[str], torch.Tensor | None]:
    """
    Map `language` (one code, one per row, or already-resolved ids: a 1-D integer tensor of positions in
    `languages`, as episodes carry them) to mask rows.

    Returns:
        The language code of each row, and their indices in `languages` (`None` when the adapter has no languages).
    """
    if isinstance(language, torch.Tensor):
        return _checked_ids(language, languages, batch_size)
    if language is None:
        if languages:
            raise ValueError(f"Pass the editing `language`; this editor knows {languages}.")
        return [], None
    if not isinstance(language, (str, list, tuple)):
        raise TypeError(f"`language` must be a language code or a list of codes (one per row), got {language!r}.")
    per_row = [language] * batch_size if isinstance(language, str) else list(language)
    if len(per_row) != batch_size:
        raise ValueError(f"Got {len(per_row)} languages for a batch of {batch_size} rows; pass one or one per row.")
    if not all(isinstance(lang, str) for lang in per_row):
        raise TypeError(f"Languages must be strings, got {per_row!r}.")
    if not languages:
        return per_row, None
    unknown = sorted({lang for lang in per_row if lang not in languages})
    if unknown:
        raise ValueError(f"Unknown language(s) {unknown}; this editor knows {languages}.")
    return per_row, torch.tensor([languages.index(lang) for lang in per_row], dtype=torch.long)


def _checked_ids(ids: torch.Tensor, languages: list[str], batch_size: int) -> tuple[list[str], torch.Tensor]:
    if not languages:
        raise ValueError("Language ids were given, but this editor has no languages.")
    if ids.dim() != 1 or ids.shape[0] != batch_size or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"Language ids must be a 1-D integer tensor with one id per row ({batch_size}), got {tuple(ids.shape)} "
            f"{ids.dtype}."
        )
    if bool(((ids < 0) | (ids >= len(languages))).any()):
        raise ValueError(f"Language ids must lie in [0, {len(languages)}) for {languages}, got {ids.tolist()}.")
    return [languages[i] for i in ids.tolist()], ids.long()
