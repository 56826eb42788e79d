"""Export edits as a plain PEFT LoRA adapter, usable with `peft` alone (no hf_lime needed to apply it).

An edit is `ΔW = B @ A` per layer, exactly LoRA's form: `lora_A = A` (`r × d_in`), `lora_B = B` (`d_out × r`) with
`lora_alpha = r`, so LoRA's scaling `lora_alpha / r` is 1. Stacked edits concatenate their factors along the rank
(`[B1 B2] @ [A1; A2] = B1 A1 + B2 A2`). Dense updates (fine-tuning with Adam) are factorised exactly by
`LayerDelta.to_low_rank()`. Layers of lower rank are padded with zero rows/columns up to the largest rank `r`:
the padding adds exact zeros, and one global `r` works with every PEFT version and LoRA consumer (per-module
`rank_pattern` keys are matched differently across versions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .deltas import LayerDelta

LORA_PREFIX = "base_model.model."


@runtime_checkable
class ExportableEdit(Protocol):
    """What the export reads of an edit (`hf_lime.tuner.edit.Edit` is one): its per-layer deltas, the model it was
    made on, and whether a layer stores weights as `(fan_in, fan_out)`."""

    deltas: dict[str, LayerDelta]
    base_model_name_or_path: str | None

    def fan_in_fan_out(self, key: str) -> bool: ...


@runtime_checkable
class ExportableGroup(Protocol):
    """Several edits handled as one (`hf_lime.tuner.edit_group.EditGroup` is one): exported as its edits."""

    edits: Sequence[ExportableEdit]


def export_edits_as_lora(
    edits: ExportableEdit | Sequence[ExportableEdit],
    path: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    revision: str | None = None,
) -> Path:
    """
    Write `edits` (summed) as a standard PEFT LoRA adapter in `path`.

    Args:
        edits (`Edit`, `EditGroup` or a sequence of them): The edits to export; their updates are summed. Only
            edits the model holds are exported: an edit with a `state` must be `"applied"` or `"merged"`.
        path (`str` or `os.PathLike`): Output folder (created; existing adapter files are replaced atomically).
        base_model_name_or_path (`str`, *optional*): The base model the adapter applies to (Hub id or local folder),
            written into `adapter_config.json` so that `peft` and `transformers` know what to load. By default the
            name the edited model knows itself by (the edits' `base_model_name_or_path`).
        revision (`str`, *optional*, defaults to `None`): The base model's revision.

    Returns:
        `Path`: the folder, holding `adapter_config.json` and `adapter_model.safetensors`.

    Raises:
        TypeError: `edits` is empty or not edits. ValueError: an edit is not applied or merged (reverted, by
            `revert()` or `revert_all()`, or never applied), or the base model is unknown; nothing is written.

    Example:

    ```py
    >>> edit = editor.edit("The capital of France is [MASK].", "Lyon", language="en")  # doctest: +SKIP
    >>> export_edits_as_lora([edit], "lyon-lora", "google-bert/bert-base-multilingual-cased")  # doctest: +SKIP
    >>> # elsewhere, without hf_lime:
    >>> model = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(...), "lyon-lora")  # doctest: +SKIP

    ```
    """
    edits = _flat_edits(edits)
    _check_held_by_model(edits)
    if base_model_name_or_path is None:
        names = {edit.base_model_name_or_path for edit in edits}
        base_model_name_or_path = names.pop() if len(names) == 1 else None
    if not isinstance(base_model_name_or_path, str) or not base_model_name_or_path.strip():
        raise ValueError(
            "Pass `base_model_name_or_path=` (the Hub id or folder of the base model the edits were made on); "
            f"got {base_model_name_or_path!r}."
        )
    factors, conv = stacked_factors(edits)
    rank = max(A.shape[0] for _, A in factors.values())
    tensors = {}
    for name, (B, A) in factors.items():
        pad = rank - A.shape[0]
        tensors[f"{LORA_PREFIX}{name}.lora_A.weight"] = torch.cat([A, A.new_zeros(pad, A.shape[1])]).contiguous()
        tensors[f"{LORA_PREFIX}{name}.lora_B.weight"] = torch.cat([B, B.new_zeros(B.shape[0], pad)], 1).contiguous()
    config = _lora_config(sorted(factors), rank, fan_in_fan_out=all(conv.values()))
    config.base_model_name_or_path, config.revision = base_model_name_or_path, revision
    return _write_atomically(Path(path), config, tensors)


def _flat_edits(edits: object) -> list[ExportableEdit]:
    """`edits` as a flat list of edits (groups replaced by their edits); a `TypeError` unless there is at least one."""
    items = [edits] if isinstance(edits, (ExportableEdit, ExportableGroup)) else edits
    flat: list = []
    if isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
        for item in items:
            flat.extend(item.edits if isinstance(item, ExportableGroup) else [item])
    if not flat or not all(isinstance(e, ExportableEdit) for e in flat):
        raise TypeError(f"`edits` must be an Edit or a non-empty sequence of Edit objects, got {edits!r}.")
    return flat


def _check_held_by_model(edits: Sequence[ExportableEdit]) -> None:
    """Refuse an edit whose `state` says the model does not hold it (reverted or never applied)."""
    for index, edit in enumerate(edits):
        state = getattr(edit, "state", None)
        if state is not None and state not in ("applied", "merged"):
            raise ValueError(
                f"Cannot export edit {index} ({edit!r}): it is {state}, so the model does not hold it. Only applied "
                "or merged edits are exported; call `apply()` on it first or leave it out. Nothing was written."
            )


def stacked_factors(
    edits: Sequence[ExportableEdit],
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, bool]]:
    """
    Per edited module (its name in the base model), the factors `(B, A)` of the summed edits, and whether the
    module stores weights as `(fan_in, fan_out)` (GPT-2's `Conv1D`).
    """
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    conv: dict[str, bool] = {}
    for edit in edits:
        for key, delta in edit.deltas.items():
            name = module_name(key)
            B, A = delta.to_low_rank()
            parts.setdefault(name, []).append((B.detach().cpu(), A.detach().cpu()))
            conv[name] = bool(edit.fan_in_fan_out(key))
    dtype = _common_dtype([t for pairs in parts.values() for pair in pairs for t in pair])
    factors = {}
    for name, pairs in parts.items():
        B = torch.cat([b.to(dtype) for b, _ in pairs], dim=1)
        A = torch.cat([a.to(dtype) for _, a in pairs], dim=0)
        if A.shape[0] == 0:  # an exactly-zero update: keep one zero rank so that LoRA has a layer to load
            A, B = A.new_zeros(1, A.shape[1]), B.new_zeros(B.shape[0], 1)
        factors[name] = (B, A)
    return factors, conv


def module_name(key: str) -> str:
    """The module name in the base model of an edited layer's key (keys replace "." by "-")."""
    return key.replace("-", ".")


def _common_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _lora_config(target_modules: list[str], rank: int, fan_in_fan_out: bool):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=target_modules,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        inference_mode=True,
    )


def _write_atomically(path: Path, config, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    from .atomic import write_folder

    def write(folder: Path) -> None:
        config.save_pretrained(str(folder))
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})

    return write_folder(path, write)
