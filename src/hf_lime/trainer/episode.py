"""One cross-lingual training episode: edit in one language, learn from another, retain everything else.

`loss = c_edit · NLL(f_θ'(x_update), y_new) + c_loc · KL(f_θ(x_retain) ‖ f_θ'(x_retain)) + c_l0 · L0(masks)`

Both terms are read at the target positions only (the `[MASK]`s of a masked LM, the continuation of a causal LM,
the class of a classifier): that is the behaviour an edit changes and locality protects, and it spares computing
vocabulary logits elsewhere (`hf_lime.head`).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.encoding import concat_batches, pad_right
from ..head import TargetLogits, target_logits
from ..metrics.xl_edit import harmonic_mean
from ..prefix_cache import KEYED_INPUTS, PrefixCache

# Logged metric names, defined once (see docs/training.md).
LOSS_EDIT, LOSS_LOC, LOSS_L0 = "loss/edit", "loss/loc", "loss/l0"
EDIT_ACC, LOC_ACC, HMEAN = "edit/acc", "loc/acc", "hmean"
NONFINITE = "nonfinite_grad_steps"
EPISODE_METRICS = (LOSS_EDIT, LOSS_LOC, LOSS_L0, EDIT_ACC, LOC_ACC, HMEAN)
# Logged at every logging step of training, one value per edited layer / mask row: `edit_lr/<i>` is the step size of
# the i-th edited layer (in `LimeModel.layer_specs` order), `gate/<language>` the mean evaluation-mode gate of that
# language's mask row over all edited layers (`gate/shared` for `mask_scope="shared"`).
EDIT_LR_PREFIX, GATE_PREFIX = "edit_lr/", "gate/"


@dataclass
class EpisodeOutput:
    """The episode loss (a differentiable scalar) and its logged parts (floats)."""

    loss: torch.Tensor
    metrics: dict[str, float]


def retain_kl(base: TargetLogits, edited: TargetLogits) -> torch.Tensor:
    """`KL(base ‖ edited)` averaged over the target positions (rows for classifiers)."""
    base_logp = F.log_softmax(base.logits.float(), dim=-1)
    edited_logp = F.log_softmax(edited.logits.float(), dim=-1)
    return F.kl_div(edited_logp, base_logp, log_target=True, reduction="batchmean")


def retain_agreement(base: TargetLogits, edited: TargetLogits) -> float:
    """Share of retain rows whose prediction (all target tokens) is unchanged by the edit."""
    flags = edited.row_correct(reference=base.logits.argmax(-1))
    return sum(flags) / max(len(flags), 1)


@contextmanager
def _root_kept_unsharded(peft_model):
    """Under FSDP2 (`fully_shard`), keep the root module's parameters gathered through the edit's capture.

    The capture differentiates the edit loss with respect to the edited layers' outputs in the middle of the
    episode's forward. FSDP2 ends every backward, this one included, by resharding the parameters of each module
    whose backward has run: the root (the editor networks, masks, step sizes, embeddings and head) would be sharded
    again before the editor reads them. The root keeps its gathered parameters through that backward only; the
    episode's real backward reshards and reduces as usual. A no-op for any other model (FSDP1 resharding is not
    triggered by the capture, DDP does not shard).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        FSDPModule = ()
    if not isinstance(peft_model, FSDPModule):
        yield
        return
    peft_model.set_reshard_after_backward(False, recurse=False)
    try:
        yield
    finally:
        peft_model.set_reshard_after_backward(True, recurse=False)


@contextmanager
def shared_prefix(cache: PrefixCache, episode: dict[str, dict]):
    """
    Run the episode's rows through the blocks below the first edited one once, in one forward.

    Pads the edit, update and retain batches to one width (right padding changes none of their outputs), stores
    the hidden states entering block `k` of every row in `cache` and yields the padded episode: inside the block,
    the capture forward (edit and retain rows) and the edited forward (update and retain rows) start at block `k`.
    The hooks come off and the rows are freed on exit (the autograd graph keeps what its backward needs).
    """
    width = max(part["input_ids"].shape[1] for part in episode.values())
    padded = {name: pad_right(part, width) for name, part in episode.items()}
    joint = concat_batches(list(padded.values()))
    inputs = {key: joint[key] for key in KEYED_INPUTS if key in joint}
    cache.attach()
    try:
        with torch.no_grad():
            cache.prefill(**inputs)
        yield padded
    finally:
        cache.detach()


def run_episode(
    peft_model,
    episode: dict[str, dict],
    task: str,
    c_edit: float,
    c_loc: float,
    c_l0: float,
    prefix: PrefixCache | None = None,
):
    """
    Compute one episode's loss and metrics through the functional path (the base model is never modified).

    Args:
        peft_model (`PeftModel`): The model with a LIME adapter.
        episode (`dict`): `{"edit", "update", "retain"}` batches from `EpisodeCollator`, each with `lang_ids`.
        task (`str`): `"masked_lm"`, `"seq_cls"` or `"causal_lm"`.
        c_edit, c_loc, c_l0 (`float`): Loss weights.
        prefix ([`~hf_lime.prefix_cache.PrefixCache`], *optional*): A detached cache of `peft_model`: the rows then
            run the blocks below the first edited one once (`shared_prefix`); the same loss up to float rounding.

    Returns:
        [`EpisodeOutput`].
    """
    with shared_prefix(prefix, episode) if prefix is not None else nullcontext(episode) as episode:
        return _run_episode(peft_model, episode, task, c_edit, c_loc, c_l0)


def _run_episode(peft_model, episode: dict[str, dict], task: str, c_edit: float, c_loc: float, c_l0: float):
    tuner = peft_model.base_model
    edit, update, retain = episode["edit"], episode["update"], episode["retain"]
    languages = edit["lang_ids"] if tuner.languages else None  # ids, resolved once by the dataset
    edit_batch = {k: v for k, v in edit.items() if k != "lang_ids"}
    has_retain = retain["input_ids"].shape[0] > 0
    # the retain rows' unedited logits come from the edit's own capture forward (outside its loss)
    passenger = {k: v for k, v in retain.items() if k != "lang_ids"} if has_retain else None
    with _root_kept_unsharded(peft_model):
        output = tuner.compute_edit(edit_batch, languages, passenger_inputs=passenger, task=task)
    base = output.info.passenger_logits
    with tuner.apply_deltas(output.deltas):
        if has_retain:  # one forward for both: the same edit applies to every row
            both = target_logits(peft_model, concat_batches([update, retain]), task)
            post, edited = both.split_rows(update["input_ids"].shape[0])
        else:
            post, edited = target_logits(peft_model, update, task), None
    loss_edit = post.loss()
    loss_loc = retain_kl(base, edited) if has_retain else loss_edit.new_zeros(())
    loss_l0 = tuner.l0_penalty(edit["lang_ids"]).to(loss_edit.device)
    loss = c_edit * loss_edit + c_loc * loss_loc + c_l0 * loss_l0
    with torch.no_grad():
        flags = post.row_correct()
        edit_acc = sum(flags) / max(len(flags), 1)
        loc_acc = retain_agreement(base, edited) if has_retain else 1.0
    metrics = {
        LOSS_EDIT: loss_edit.item(),
        LOSS_LOC: loss_loc.item(),
        LOSS_L0: loss_l0.item(),
        EDIT_ACC: edit_acc,
        LOC_ACC: loc_acc,
        HMEAN: float(harmonic_mean(edit_acc, loc_acc)),
    }
    return EpisodeOutput(loss=loss, metrics=metrics)
