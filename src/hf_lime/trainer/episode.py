"""One cross-lingual training episode: edit in one language, learn from another, retain everything else.

`loss = c_edit · NLL(f_θ'(x_update), y_new) + c_loc · KL(f_θ(x_retain) ‖ f_θ'(x_retain)) + c_l0 · L0(masks)`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.encoding import is_correct

# Logged metric names, defined once (see docs/training.md).
LOSS_EDIT, LOSS_LOC, LOSS_L0 = "loss/edit", "loss/loc", "loss/l0"
EDIT_ACC, LOC_ACC, HMEAN = "edit/acc", "loc/acc", "hmean"
NONFINITE = "nonfinite_grad_steps"
EPISODE_METRICS = (LOSS_EDIT, LOSS_LOC, LOSS_L0, EDIT_ACC, LOC_ACC, HMEAN)


@dataclass
class EpisodeOutput:
    """The episode loss (a differentiable scalar) and its logged parts (floats)."""

    loss: torch.Tensor
    metrics: dict[str, float]


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in ("lang_ids", "labels")}


def _positions(task: str, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
    """Boolean mask over `logits.shape[:-1]` of the positions the KL averages over (non-padding)."""
    if task == "seq_cls":
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    mask = batch.get("attention_mask")
    return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device) if mask is None else mask.bool()


def retain_kl(task: str, batch: dict[str, Any], base_logits: torch.Tensor, edited_logits: torch.Tensor):
    """`KL(base ‖ edited)` averaged over the non-padding positions (rows for classifiers)."""
    keep = _positions(task, batch, edited_logits)
    base_logp = F.log_softmax(base_logits.float(), dim=-1)[keep]
    edited_logp = F.log_softmax(edited_logits.float(), dim=-1)[keep]
    return F.kl_div(edited_logp, base_logp, log_target=True, reduction="batchmean")


def retain_agreement(task: str, batch: dict[str, Any], base_logits, edited_logits) -> float:
    """Share of retain rows whose prediction (all target tokens) is unchanged by the edit."""
    base_pred = dict(batch)
    if task == "seq_cls":
        base_pred["labels"] = base_logits.argmax(-1)
    else:
        labels = batch["labels"].clone()
        shifted = base_logits.argmax(-1)
        if task == "causal_lm":
            shifted = torch.cat([shifted[:, :1], shifted[:, :-1]], dim=1)  # prediction for token t sits at t-1
        labels[labels != -100] = shifted[labels != -100]
        base_pred["labels"] = labels
    flags = is_correct(task, edited_logits, base_pred)
    return sum(flags) / max(len(flags), 1)


def run_episode(peft_model, episode: dict[str, dict], task: str, c_edit: float, c_loc: float, c_l0: float):
    """
    Compute one episode's loss and metrics through the functional path (the base model is never modified).

    Args:
        peft_model (`PeftModel`): The model with a LIME adapter.
        episode (`dict`): `{"edit", "update", "retain"}` batches from `EpisodeCollator`, each with `lang_ids`.
        task (`str`): `"masked_lm"`, `"seq_cls"` or `"causal_lm"`.
        c_edit, c_loc, c_l0 (`float`): Loss weights.

    Returns:
        [`EpisodeOutput`].
    """
    tuner = peft_model.base_model
    edit, update, retain = episode["edit"], episode["update"], episode["retain"]
    languages = [tuner.languages[i] for i in edit["lang_ids"].tolist()] if tuner.languages else None
    edit_batch = {k: v for k, v in edit.items() if k != "lang_ids"}
    has_retain = retain["input_ids"].shape[0] > 0
    if has_retain:
        with torch.no_grad():
            base_logits = peft_model(**_model_inputs(retain)).logits
    output = tuner.compute_edit(edit_batch, languages)
    with tuner.apply_deltas(output.deltas):
        post = peft_model(**{k: v for k, v in update.items() if k != "lang_ids"})
        edited_logits = peft_model(**_model_inputs(retain)).logits if has_retain else None
    loss_edit = post.loss
    loss_loc = retain_kl(task, retain, base_logits, edited_logits) if has_retain else loss_edit.new_zeros(())
    loss_l0 = tuner.l0_penalty(edit["lang_ids"]).to(loss_edit.device)
    loss = c_edit * loss_edit + c_loc * loss_loc + c_l0 * loss_l0
    with torch.no_grad():
        edit_acc = float(sum(is_correct(task, post.logits, update)) / update["input_ids"].shape[0])
        loc_acc = retain_agreement(task, retain, base_logits, edited_logits) if has_retain else 1.0
    metrics = {
        LOSS_EDIT: loss_edit.item(),
        LOSS_LOC: loss_loc.item(),
        LOSS_L0: loss_l0.item(),
        EDIT_ACC: edit_acc,
        LOC_ACC: loc_acc,
        HMEAN: harmonic_mean(edit_acc, loc_acc),
    }
    return EpisodeOutput(loss=loss, metrics=metrics)
