"""Fine-tuning baseline: a few optimiser steps on the edit loss, restricted to the edited layers. Needs no training.

Each step runs the model with the current update added (`EditContext.forward`, base weights untouched) while the
edited layers record their inputs `x` and output gradients `δ`; the gradient of layer `W` is then `Σ_t δ_t x_tᵀ`.

- `"sgd"` keeps the update **exactly low-rank**: step `k` appends the factors `B_k = -lr δ_kᵀ`, `A_k = x_k` (tokens
  whose gradient is exactly zero are dropped; they contribute nothing). When the accumulated rank would make the
  factors larger than a dense matrix, the update is stored densely from then on (same values, cheaper to keep).
- `"adam"` and `"rmsprop"` keep a dense `ΔW` per layer, stepped by `torch.optim.Adam` / `torch.optim.RMSprop` with
  the same gradients. The LiME reference code's FT baseline is RMSprop at 5e-6 for up to 100 steps, stopping once
  the whole target is right: `LimeConfig(editor="ft", ft_optimizer="rmsprop", ft_lr=5e-6, ft_steps=100)`.

With `early_stop`, fine-tuning stops as soon as every target of every row is the model's argmax. With `loc_coef > 0`
and retain inputs, the loss adds `loc_coef · KL(f_base(retain) ‖ f_edited(retain))` over non-padding positions.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..deltas import EditInfo, LayerDelta
from .base import BaseEditor, EditorOutput, LayerSpec

OPTIMIZERS = ("sgd", "adam", "rmsprop")
_TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


@dataclass
class _Pass:
    """One forward pass with the edited layers recording: the loss, whether all targets are predicted, the records."""

    loss: torch.Tensor
    predicted: bool
    records: dict[str, list[Any]]


class FineTuneEditor(BaseEditor):
    """
    Fine-tuning as a LIME editor (the "FT" baseline of the LiME paper; "FT+L" with `loc_coef > 0`).

    Args:
        layers (`list[LayerSpec]`): The edited layers.
        steps (`int`, *optional*, defaults to `10`): Maximum number of optimiser steps (`ft_steps`).
        lr (`float`, *optional*, defaults to `1e-3`): Step size (`ft_lr`).
        optimizer (`str`, *optional*, defaults to `"sgd"`): `"sgd"` (exactly low-rank), `"adam"` or `"rmsprop"`
            (dense).
        early_stop (`bool`, *optional*, defaults to `True`): Stop once every target is predicted (`ft_early_stop`).
        loc_coef (`float`, *optional*, defaults to `0.0`): Weight of the KL on retain inputs (`ft_loc_coef`).

    Example:

    ```py
    >>> from hf_lime.editors import FineTuneEditor, LayerSpec
    >>> FineTuneEditor([LayerSpec("l0", "l0", d_in=8, d_out=16)], steps=5, optimizer="adam")
    FineTuneEditor(layers=1, steps=5, lr=0.001, optimizer='adam')

    ```
    """

    requires_training = False
    uses_masks = False

    def __init__(
        self,
        layers: list[LayerSpec],
        steps: int = 10,
        lr: float = 1e-3,
        optimizer: str = "sgd",
        early_stop: bool = True,
        loc_coef: float = 0.0,
    ) -> None:
        super().__init__(layers)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"`steps` must be a positive int, got {steps!r}.")
        if not lr > 0 or not loc_coef >= 0:
            raise ValueError(f"`lr` must be > 0 and `loc_coef` >= 0, got lr={lr!r}, loc_coef={loc_coef!r}.")
        self.steps, self.lr, self.optimizer = steps, float(lr), optimizer
        self.early_stop, self.loc_coef = bool(early_stop), float(loc_coef)

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, steps={self.steps}, lr={self.lr}, optimizer={self.optimizer!r}"

    def compute_deltas(self, ctx) -> EditorOutput:
        retain, base_logits = self._retain_reference(ctx)
        if self.optimizer == "sgd":
            update = _SgdUpdate(self.layers, self.lr)
        else:
            update = _DenseUpdate(_TORCH_OPTIMIZERS[self.optimizer], self.lr)
        info = EditInfo(steps=0)
        losses = []
        for step in range(self.steps + 1):
            if step == self.steps and not self.early_stop:
                break
            result = self._forward(ctx, update.deltas(), retain, base_logits)
            losses.append(float(result.loss.detach()))
            done = self.early_stop and result.predicted
            if done or step == self.steps:
                break
            update.step(_layer_grads(result))
            info.steps = step + 1
        info.loss_before = losses[0]
        info.extra.update({"losses": losses, "optimizer": self.optimizer})
        return EditorOutput(deltas=update.deltas(), info=info)

    def _retain_reference(self, ctx) -> tuple[dict[str, Any] | None, torch.Tensor | None]:
        """The retain batch and its base-model logits, when the locality term is on."""
        retain = getattr(ctx, "retain_batch", None)
        if self.loc_coef == 0:
            return None, None
        if retain is None:
            warnings.warn(
                "ft_loc_coef > 0 but the edit has no `retain_inputs`: running plain fine-tuning.", stacklevel=3
            )
            return None, None
        retain = _checked_retain_batch(retain)
        with torch.no_grad():
            return retain, ctx.forward(None, retain).logits.detach()

    def _forward(self, ctx, deltas, retain, base_logits) -> _Pass:
        with ctx.recording() as records, torch.enable_grad():
            loss, predicted = ctx.edit_loss(deltas)
            if loss is None or not torch.isfinite(loss):
                raise ValueError(f"The fine-tuning loss is not usable ({loss}); check the edit labels and model head.")
            if retain is not None:
                logits = ctx.forward(deltas, retain).logits
                loss = loss + self.loc_coef * _kl(base_logits, logits, retain.get("attention_mask"))
        return _Pass(loss=loss, predicted=predicted, records=records)


class _SgdUpdate:
    """Exact SGD on each edited weight, kept as stacked low-rank factors (dense once that is cheaper)."""

    def __init__(self, layers: list[LayerSpec], lr: float) -> None:
        self.lr = lr
        self.specs = {spec.key: spec for spec in layers}
        self.factors: dict[str, LayerDelta] = {}

    def deltas(self) -> dict[str, LayerDelta]:
        return dict(self.factors)

    def step(self, grads: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for key, (x, delta) in grads.items():
            B, A = -self.lr * delta.T, x
            old = self.factors.get(key)
            if old is not None and old.A is None:
                self.factors[key] = LayerDelta(B=old.B + B @ A)
                continue
            if old is not None:
                B, A = torch.cat([old.B, B], dim=1), torch.cat([old.A, A], dim=0)
            spec = self.specs[key]
            dense_is_smaller = B.shape[1] * (spec.d_in + spec.d_out) > spec.d_in * spec.d_out
            self.factors[key] = LayerDelta(B=B @ A) if dense_is_smaller else LayerDelta(B=B, A=A)


class _DenseUpdate:
    """A torch optimizer (Adam, RMSprop) on a dense `ΔW` per edited layer."""

    def __init__(self, optimizer_cls: type[torch.optim.Optimizer], lr: float) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer_cls, self.lr = optimizer_cls, lr
        self.optim: torch.optim.Optimizer | None = None

    def deltas(self) -> dict[str, LayerDelta]:
        return {key: LayerDelta(B=p.detach()) for key, p in self.params.items()}

    def step(self, grads: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.optim is None:
            self.params = {
                key: torch.zeros(d.shape[1], x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
                for key, (x, d) in grads.items()
            }
            self.optim = self.optimizer_cls(list(self.params.values()), lr=self.lr)
        for key, param in self.params.items():
            x, delta = grads[key]
            param.grad = delta.T @ x
        self.optim.step()


def _layer_grads(result: _Pass) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer `(x, δ)` over all recorded tokens with a non-zero output gradient: `∇W = δᵀ x`."""
    flat = [(key, rec) for key, recs in result.records.items() for rec in recs]
    outs = torch.autograd.grad(result.loss, [rec.outputs for _, rec in flat], allow_unused=True)
    per_layer: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {k: ([], []) for k in result.records}
    for (key, rec), grad in zip(flat, outs, strict=True):
        if grad is None:
            continue
        x = rec.inputs.reshape(-1, rec.inputs.shape[-1])
        delta = grad.reshape(-1, grad.shape[-1])
        keep = delta.abs().amax(dim=-1) > 0
        per_layer[key][0].append(x[keep])
        per_layer[key][1].append(delta[keep].to(x.dtype))
    grads = {}
    for key, (xs, ds) in per_layer.items():
        if not xs:
            raise ValueError(f"The edited layer `{key}` was not called by the model, so it cannot be fine-tuned.")
        grads[key] = (torch.cat(xs).detach(), torch.cat(ds).detach())
    return grads


def _checked_retain_batch(retain: Any) -> dict[str, Any]:
    if not isinstance(retain, Mapping):
        raise TypeError(f"`retain_inputs` must be a mapping of tensors (a tokenizer's output), got {type(retain)}.")
    ids = retain.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        raise ValueError("`retain_inputs` needs integer `input_ids` of shape (batch, sequence).")
    return {k: v for k, v in retain.items() if k != "labels"}


def _kl(base_logits: torch.Tensor, logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`KL(p_base ‖ p_edited)` per position (or per row for classifiers), averaged over non-padding positions."""
    base_logp = base_logits.float().log_softmax(-1)
    kl = (base_logp.exp() * (base_logp - logits.float().log_softmax(-1))).sum(-1)
    if attention_mask is None or kl.dim() != attention_mask.dim():
        return kl.mean()
    weights = attention_mask.to(kl.device, kl.dtype)
    return (kl * weights).sum() / weights.sum().clamp(min=1.0)


def ft_kwargs(config) -> dict:
    """Constructor arguments of [`FineTuneEditor`] from a `LimeConfig`."""
    return {
        "steps": config.ft_steps,
        "lr": config.ft_lr,
        "optimizer": config.ft_optimizer,
        "early_stop": config.ft_early_stop,
        "loc_coef": config.ft_loc_coef,
    }
