"""What an editor gets for one edit request: captured activations/gradients, masks, step sizes, a forward."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.encoding import concat_batches, is_correct
from ..deltas import LayerDelta
from ..head import TargetLogits, target_logits
from ..masks import MaskBank
from ..tasks import is_causal_lm
from .layer import LimeLayer


@dataclass
class LayerTokens:
    """One edited layer's tokens as an editor sees them: `x` `(n, d_in)`, `delta` `(n, d_out)` and each token's
    batch row `rows` `(n,)`, after dropping tokens whose `x` or `δ` is all zero and applying the LiME mask."""

    x: torch.Tensor
    delta: torch.Tensor
    rows: torch.Tensor


@dataclass
class Captured:
    """Per edited layer (by key): inputs `x` `(N, d_in)` and output gradients `δ` `(N, d_out)` of the N real tokens."""

    inputs: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    token_lang_ids: torch.Tensor | None
    token_rows: torch.Tensor
    loss: float
    passenger_logits: TargetLogits | None = None


class EditContext:
    """
    The model-side services an editor uses to compute one edit: the `hf_lime.editors.EditorContext` protocol.

    Args:
        model (`nn.Module`): The model with LIME layers injected (called with `**batch`).
        layers (`dict[str, LimeLayer]`): Edited layers by key.
        batch (`dict[str, torch.Tensor]`): The edit batch, with `labels`.
        lang_ids (`torch.Tensor`, *optional*): Language id per batch row, `None` without languages.
        masks (`MaskBank`, *optional*): LiME masks, `None` or empty when off.
        edit_lrs (`nn.Module`): Callable `key -> step size`.
        retain_batch (`Mapping[str, torch.Tensor]`, *optional*): Unrelated inputs whose outputs the edit should keep
            (used by editors that constrain locality at edit time, e.g. fine-tuning with `ft_loc_coef > 0`).
        task (`str`, *optional*): `"masked_lm"`, `"causal_lm"` or `"seq_cls"`; inferred from the model's class when
            omitted. With a known task the edit loss computes vocabulary logits at the target positions only
            (`hf_lime.head`); otherwise the model's own `loss` is used.
        passenger_batch (`Mapping[str, torch.Tensor]`, *optional*): Rows forwarded with the edit batch in the
            capture's one forward, outside its loss; their unedited target logits are `passenger_logits` (needs a
            known task).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, LimeLayer],
        batch: dict[str, torch.Tensor],
        lang_ids: torch.Tensor | None,
        masks: MaskBank | None,
        edit_lrs: nn.Module,
        retain_batch: Any = None,
        task: str | None = None,
        passenger_batch: Any = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.batch = batch
        self.lang_ids = lang_ids
        self.masks = masks
        self.edit_lrs = edit_lrs
        self.retain_batch = retain_batch
        self.task = task or known_task(model)
        self.passenger_batch = passenger_batch
        self._captured: Captured | None = None

    @property
    def input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def edit_lr(self, key: str) -> torch.Tensor:
        return self.edit_lrs(key)

    def mask(self, key: str, token_lang_ids: torch.Tensor | None, d_in: int):
        """`(input_mask, grad_mask)` of layer `key` for the given per-token languages, or `None` when LiME is off."""
        if self.masks is None or not self.masks.enabled or token_lang_ids is None:
            return None
        return self.masks.split(key, token_lang_ids, d_in)

    def masked_inputs(self, key: str, d_in: int) -> LayerTokens:
        """
        Layer `key`'s captured tokens with a non-zero input and gradient, each scaled by its language's LiME mask.

        The mask re-weights features and never resizes a token: the masked `x` and `δ` of every token keep the norms
        they had before masking, so an edit's size does not depend on the mask (a uniform mask changes nothing).
        """
        captured = self.capture()
        x, delta = captured.inputs[key], captured.grads[key]
        keep = (x != 0).any(-1) & (delta != 0).any(-1)
        x, delta, rows = x[keep], delta[keep], captured.token_rows.to(keep.device)[keep]
        lang_ids = None if captured.token_lang_ids is None else captured.token_lang_ids.to(keep.device)[keep]
        masks = self.mask(key, lang_ids, d_in)
        if masks is not None:
            x, delta = _reweight(x, masks[0]), _reweight(delta, masks[1])
        return LayerTokens(x=x, delta=delta, rows=rows)

    @contextmanager
    def recording(self):
        """Inside the block every edited layer records `(inputs, outputs)` of its calls; yields them by layer key."""
        with ExitStack() as stack:
            yield {key: stack.enter_context(layer.capture()) for key, layer in self.layers.items()}

    def capture(self) -> Captured:
        """Run the model once on the edit batch; return each layer's inputs and loss gradients (cached)."""
        if self._captured is None:
            self._captured = capture_layer_grads(
                self.model, self.layers, self.batch, self.lang_ids, self.task, self.passenger_batch
            )
        return self._captured

    @property
    def passenger_logits(self) -> TargetLogits | None:
        """The passenger rows' unedited target logits (detached), from the capture's forward."""
        return self.capture().passenger_logits if self.passenger_batch is not None else None

    def forward(self, deltas: dict[str, LayerDelta] | None = None, batch: dict[str, Any] | None = None):
        """Model outputs on `batch` (default: the edit batch) with `deltas` added; nothing is modified."""
        with apply_functional_deltas(self.layers, deltas or {}):
            return self.model(**(batch if batch is not None else self.batch))

    def edit_loss(self, deltas: dict[str, LayerDelta] | None = None) -> tuple[torch.Tensor, bool]:
        """The edit batch's loss with `deltas` added, and whether every target already is the model's argmax."""
        with apply_functional_deltas(self.layers, deltas or {}):
            if self.task is not None:
                scored = target_logits(self.model, self.batch, self.task)
                return scored.loss(), all(scored.row_correct())
            outputs = self.model(**self.batch)
        labels = self.batch["labels"]
        task = "seq_cls" if labels.dim() == 1 else "causal_lm" if is_causal_lm(self.model) else "masked_lm"
        return outputs.loss, all(is_correct(task, outputs.logits.detach(), self.batch))


@contextmanager
def apply_functional_deltas(layers: dict[str, LimeLayer], deltas: dict[str, LayerDelta]):
    """Add (possibly differentiable) deltas to the layers' outputs inside the block."""
    unknown = sorted(set(deltas) - set(layers))
    if unknown:
        raise ValueError(f"Deltas for unknown layers {unknown}; edited layers are {sorted(layers)}.")
    with ExitStack() as stack:
        for key, delta in deltas.items():
            stack.enter_context(layers[key].functional_delta(delta))
        yield


def capture_layer_grads(
    model: nn.Module,
    layers: dict[str, LimeLayer],
    batch: dict[str, Any],
    lang_ids: torch.Tensor | None,
    task: str | None = None,
    passenger: dict[str, Any] | None = None,
) -> Captured:
    """Forward the edit batch recording every edited layer, then differentiate the loss w.r.t. the layer outputs.

    With a known `task` the vocabulary logits are computed at the target positions only (same loss and gradients).
    `passenger` rows (needs `task`) ride along in the same forward, outside the loss: their unedited target logits
    come back, detached, as `Captured.passenger_logits` (a training episode's retain rows: one forward and one
    read of the vocabulary matrix instead of two), and nothing else of the capture changes.
    """
    if passenger is not None and task is None:
        raise ValueError("Passenger rows need a known task (`masked_lm`, `causal_lm` or `seq_cls`).")
    n_rows, width = batch["input_ids"].shape
    joint = batch if passenger is None else concat_batches([batch, passenger])
    riders = None
    with ExitStack() as stack, torch.enable_grad():
        records = {key: stack.enter_context(layer.capture()) for key, layer in layers.items()}
        if task is not None:
            scored = target_logits(model, joint, task)
            if passenger is not None:
                scored, riders = scored.split_rows(n_rows)
                riders = riders.detached()
            loss = scored.loss()
        else:
            outputs = model(**batch)
            loss = getattr(outputs, "loss", None)
            del outputs  # free the logits before the backward (the edit's peak memory then stays below a fwd+bwd's)
    if loss is None:
        raise TypeError(
            f"{type(model).__name__} returned no loss for the edit batch: edit a model with a task head "
            "(e.g. *ForMaskedLM, *ForSequenceClassification, *ForCausalLM) and pass `labels`."
        )
    if not torch.isfinite(loss):
        raise ValueError(f"The edit loss is not finite ({loss.item()}); check the labels and the model's dtype.")
    flat = [(key, i) for key, recs in records.items() for i in range(len(recs))]
    grads = torch.autograd.grad(loss, [records[k][i].outputs for k, i in flat], allow_unused=True)
    grad_of = dict(zip(flat, grads, strict=True))
    keep = _token_keep_mask(batch)
    crop = (lambda t: t) if passenger is None else (lambda t: _edit_rows(t, n_rows, width, joint))
    inputs, out_grads = {}, {}
    for key, recs in records.items():
        if not recs:
            raise ValueError(f"The edited layer {layers[key].__class__.__name__} `{key}` was not called by the model.")
        xs, ds = [], []
        for i, rec in enumerate(recs):
            g = grad_of[(key, i)]
            xs.append(_flatten(crop(rec.inputs), keep))
            ds.append(_flatten(crop(torch.zeros_like(rec.outputs) if g is None else g), keep))
        inputs[key], out_grads[key] = torch.cat(xs).detach(), torch.cat(ds).detach()
    rows = _token_rows(batch, keep)
    token_lang = None if lang_ids is None else lang_ids.to(rows.device)[rows]
    return Captured(inputs, out_grads, token_lang, rows, float(loss.detach()), riders)


def _edit_rows(t: torch.Tensor, n_rows: int, width: int, joint: dict[str, Any]) -> torch.Tensor:
    """A recorded tensor of the joint (edit + passenger) forward, cut back to the edit rows and their width."""
    if t.shape[0] != joint["input_ids"].shape[0]:
        raise RuntimeError(f"Cannot separate the edit rows of a recorded tensor of shape {tuple(t.shape)}.")
    t = t[:n_rows]
    return t[:, :width] if t.dim() == 3 and t.shape[1] == joint["input_ids"].shape[1] else t


def _reweight(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`values ⊙ mask`, rescaled per row to the norm `values` had: the mask changes directions, not sizes."""
    masked = values * mask.to(values.dtype)
    tiny = torch.finfo(values.dtype).tiny
    return masked * (values.norm(dim=-1, keepdim=True) / masked.norm(dim=-1, keepdim=True).clamp_min(tiny))


def _token_keep_mask(batch: dict[str, Any]) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return None if mask is None else mask.reshape(-1).bool()


def _flatten(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    flat = t.reshape(-1, t.shape[-1])
    if keep is not None and keep.numel() == flat.shape[0]:
        flat = flat[keep.to(flat.device)]
    return flat


def _token_rows(batch: dict[str, Any], keep: torch.Tensor | None) -> torch.Tensor:
    input_ids = batch["input_ids"]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(input_ids.shape[1])
    return rows if keep is None else rows[keep.to(rows.device)]


def known_task(model: nn.Module) -> str | None:
    from ..tasks import infer_task

    try:
        return infer_task(model)
    except ValueError:
        return None
