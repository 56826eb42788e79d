"""Many MEND edits refitted layer by layer, each layer on the inputs the edits below it give (MEMIT's order).

[`~hf_lime.tuner.merge.preserve_merge`] fits every edited layer on the raw inputs its edit tokens had in the unedited
model. Once the layers below are edited those inputs move, so an upper layer's update is read at inputs it was not
fitted on. [`refit_layers`] fits the layers in forward order instead: for layer `l` the edit tokens' inputs `X'` are
read on the model holding the already refitted layers below, and token `j`'s target is what its own request's MEND
edit, applied alone, makes the layer output (`o_j`, the single edit's path through the model), less what the
unedited weight gives the new input: `v_j = o_j − W x'_j`. The update is MEMIT's least-squares form with the
preserved keys' second moment `C` and a weight `s_j` per token:

    ΔW = V S X' (X'ᵀ S X' + w T C + εI)⁻¹,

`s_j = 1` at the positions whose logits the edit's loss reads and `context_weight` at the prompt's other tokens
(their targets matter less; they crowd the answer positions out of a layer only `d_in` wide), times a weight per
request that [`~hf_lime.tuner.LimeModel.edit_many`] raises for requests that did not hold and refits. Each edit keeps
its own tokens' columns, so the edits still revert one by one. Choices and what they bought: docs/results.md §5a.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch

from ..data.encoding import concat_batches
from ..deltas import SOLVE_KEYS, SOLVE_POSITIONS, LayerDelta, joined
from ..head import target_positions
from .context import _flatten, _token_keep_mask, apply_functional_deltas, known_task
from .merge import _checked_moments, _checked_weight, _preserving_factor
from .preserve import MODEL_INPUTS, _attended, _smallest_network

DEFAULT_REFIT_WEIGHT = 1.0  # `w`: chosen on the CLDR train split at N = 100 (docs/results.md §5a)
DEFAULT_CONTEXT_WEIGHT = 0.1  # `s_j` of a prompt's tokens other than the answer positions; chosen with it
GROUP_ROWS = 64  # edit rows per forward when the refit reads a layer's inputs
REFIT_ROUNDS = 4  # edit_many's fits of one batch at most (the first + 3 with the failed requests weighted up)
SEQUENCE_REFIT_ROUNDS = 3  # the fits at most at each step of a sequence (every step refits all edits so far)
FAILED_BOOST = 4.0  # the factor a failed request's weight is multiplied by before the next refit

Singles = dict[str, torch.Tensor]  # layer key -> the single edit's layer outputs at its key tokens, float64


def refit_layers(
    model: Any,
    edits: Sequence[Any],
    batches: Sequence[Mapping[str, Any]],
    moments: dict[str, torch.Tensor],
    weight: float | None = None,
    context_weight: float = DEFAULT_CONTEXT_WEIGHT,
    row_weights: Sequence[torch.Tensor] | None = None,
    singles: list[Singles] | None = None,
) -> None:
    """
    Refit computed (not applied) MEND edits layer by layer in forward order (the order of the model's modules; the
    module docstring). In place: each edit's deltas are replaced; nothing is applied.

    Args:
        model ([`~hf_lime.tuner.LimeModel`]): The tuner the edits will be applied to, as the refit should see it
            (none of `edits` applied).
        edits (`Sequence[Edit]`): MEND edits with their keys recorded (`EditInfo.extra[SOLVE_KEYS]` and
            `[SOLVE_POSITIONS]`), holding MEND's own factors.
        batches (`Sequence[Mapping]`): Each edit's batch, as given to `prepare_edit`.
        moments (`dict[str, torch.Tensor]`): Layer key -> `(d_in, d_in)` second moment of the keys to preserve.
        weight (`float`, *optional*): `w` (`DEFAULT_REFIT_WEIGHT`).
        context_weight (`float`, *optional*): `s_j` of the tokens that are not answer positions.
        row_weights (`Sequence[torch.Tensor]`, *optional*): Per edit, a weight per batch row (default 1).
        singles (`list`, *optional*): A cache of the edits' single paths: the first `len(singles)` are used as
            given, the others computed and appended.

    Raises:
        ValueError: an edit without recorded keys (not MEND), a moment missing or of the wrong shape, a bad weight.
    """
    weight = _checked_weight(DEFAULT_REFIT_WEIGHT if weight is None else weight)
    if isinstance(context_weight, bool) or not isinstance(context_weight, int | float) or not context_weight >= 0:
        raise ValueError(f"`context_weight` must be a number >= 0, got {context_weight!r}.")
    for edit in edits:
        if SOLVE_POSITIONS not in edit.info.extra:
            raise ValueError("The layer-by-layer refit needs MEND edits (their factors and their tokens' inputs).")
    singles = [] if singles is None else singles
    for edit, batch in list(zip(edits, batches, strict=True))[len(singles) :]:
        singles.append(_single_outputs(model, edit, batch))
    row_weights = list(row_weights) if row_weights is not None else [None] * len(edits)
    task = known_task(model.model)
    fitted: list[dict[str, LayerDelta]] = [{} for _ in edits]
    for key in [key for key in model.lime_layers if key in edits[0].deltas]:
        inputs = _inputs_at(model, batches, key, _joined(fitted))
        parts = [
            _layer_part(model, edit, x, key, single, _token_scales(edit, batch, key, task, context_weight, rows))
            for edit, batch, x, single, rows in zip(edits, batches, inputs, singles, row_weights, strict=True)
        ]
        X, targets, scale = (torch.cat([part[i] for part in parts]) for i in range(3))
        factor = _preserving_factor(X * scale[:, None], _checked_moments(moments, key, X.shape[1]).cpu(), weight)
        _split_into(fitted, edits, key, targets.T, factor * scale[:, None], [x.shape[0] for x, _, _ in parts])
    for edit, deltas in zip(edits, fitted, strict=True):
        edit.deltas = deltas


def row_groups(batches: Sequence[Mapping[str, Any]], max_rows: int = GROUP_ROWS) -> list[slice]:
    """Consecutive batches joined into groups of at most `max_rows` rows (a larger batch alone), as slices."""
    groups, start, rows = [], 0, 0
    for index, batch in enumerate(batches):
        size = batch["input_ids"].shape[0]
        if index > start and rows + size > max_rows:
            groups.append(slice(start, index))
            start, rows = index, 0
        rows += size
    return groups + ([slice(start, len(batches))] if len(batches) > start else [])


def _inputs_at(model: Any, batches: Sequence[Mapping[str, Any]], key: str, below: dict) -> list[torch.Tensor]:
    """Per batch, layer `key`'s inputs at its attended tokens with the refitted layers `below` added: the batches run
    together, `GROUP_ROWS` rows per forward (right padding changes no attended token's output)."""
    out: list[torch.Tensor] = []
    for group in row_groups(batches):
        x, _ = _record(model, concat_batches([_model_inputs(b) for b in batches[group]]), below, [key])[key]
        out += list(x.split([_n_attended(b) for b in batches[group]]))
    return out


def _n_attended(batch: Mapping[str, Any]) -> int:
    return int(_attended(batch).sum())


def _layer_part(model: Any, edit: Any, x: torch.Tensor, key: str, single: Singles, scale: torch.Tensor) -> tuple:
    """`(X', v, sqrt(s))` of one edit's key tokens at layer `key` (`x`: its batch's inputs at every token)."""
    x = x[edit.info.extra[SOLVE_POSITIONS][key].to(x.device)].double().cpu()
    return x, single[key] - _base_outputs(model.lime_layers[key].base_layer, x), scale


def _split_into(fitted: list, edits: Sequence[Any], key: str, V: torch.Tensor, factor: torch.Tensor, counts) -> None:
    """Each edit's columns of `V` and rows of `factor` as its delta of layer `key`."""
    for done, edit, v, a in zip(fitted, edits, V.split(counts, 1), factor.split(counts), strict=True):
        like = edit.deltas[key]
        done[key] = LayerDelta(v.to(like.B.device, like.B.dtype), a.to(like.A.device, like.A.dtype))


@torch.no_grad()
def _base_outputs(base: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`W x` of the unedited layer (float64, CPU) for float64 CPU inputs `x`."""
    weight = next(base.parameters())
    return base(x.to(weight.device, weight.dtype)).double().cpu()


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


@torch.no_grad()
def _record(model: Any, batch: Mapping[str, Any], deltas: dict[str, LayerDelta], keys: Sequence[str]) -> dict:
    """Per layer key in `keys`, `(inputs, outputs)` at the attended tokens of `batch` with `deltas` added."""
    layers = model.lime_layers
    with ExitStack() as stack:
        records = {key: stack.enter_context(layers[key].capture()) for key in keys}
        stack.enter_context(apply_functional_deltas(layers, deltas))
        _smallest_network(model.model, layers.values())(**_model_inputs(batch))
    keep = _token_keep_mask(batch)  # flattened over the attended tokens, as the edit's capture is
    return {
        key: (
            torch.cat([_flatten(r.inputs, keep) for r in recs]),
            torch.cat([_flatten(r.outputs, keep) for r in recs]),
        )
        for key, recs in records.items()
    }


def _single_outputs(model: Any, edit: Any, batch: Mapping[str, Any]) -> Singles:
    """Per layer key, the layer's outputs at `edit`'s key tokens when each row's own part of `edit` is applied alone
    and that row run alone (the single edit's path)."""
    keys, positions = edit.info.extra[SOLVE_KEYS], edit.info.extra[SOLVE_POSITIONS]
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    counts = torch.full((ids.shape[0],), ids.shape[1]) if mask is None else mask.sum(-1).cpu()
    starts = torch.cumsum(counts, 0) - counts
    out = {key: torch.zeros(keys[key][0].shape[0], delta.B.shape[0], dtype=torch.float64)
           for key, delta in edit.deltas.items()}  # fmt: skip
    for row in range(ids.shape[0]):
        own = {key: (keys[key][1] == row).cpu() for key in edit.deltas}
        deltas = {key: LayerDelta(d.B[:, own[key].to(d.B.device)], d.A[own[key].to(d.A.device)])
                  for key, d in edit.deltas.items()}  # fmt: skip
        recorded = _record(model, {k: v[row : row + 1] for k, v in _model_inputs(batch).items()}, deltas, list(deltas))
        for key in edit.deltas:
            local = positions[key].cpu()[own[key]] - starts[row]
            outputs = recorded[key][1]
            out[key][own[key]] = outputs[local.to(outputs.device)].double().cpu()
    return out


def _token_scales(
    edit: Any, batch: Mapping[str, Any], key: str, task: str | None, context_weight: float, rows: torch.Tensor | None
) -> torch.Tensor:
    """`sqrt(s_j)` of `edit`'s key tokens at layer `key`: 1 at answer positions, `context_weight` elsewhere, times
    the row's weight."""
    positions = edit.info.extra[SOLVE_POSITIONS][key].cpu()
    labels = batch.get("labels")
    if labels is not None and labels.dim() == 2 and task in ("masked_lm", "causal_lm"):  # answer positions known
        answer = _flatten(target_positions(task, labels).unsqueeze(-1), _token_keep_mask(batch)).squeeze(-1)
        weights = torch.where(answer.cpu()[positions], 1.0, float(context_weight)).double()
    else:
        weights = torch.ones(positions.shape[0], dtype=torch.float64)
    if rows is not None:
        weights = weights * rows.double().cpu()[edit.info.extra[SOLVE_KEYS][key][1].cpu()]
    return weights.sqrt()


def _joined(fitted: list[dict[str, LayerDelta]]) -> dict[str, LayerDelta]:
    """Every edit's refitted deltas so far, joined per layer (their factors side by side)."""
    parts: dict[str, list[LayerDelta]] = {}
    for deltas in fitted:
        for key, delta in deltas.items():
            parts.setdefault(key, []).append(delta)
    return {key: joined(layer_parts) for key, layer_parts in parts.items()}
