"""Vocabulary logits only where they are read: at the target positions of masked and causal LMs.

A model such as multilingual-e5 / XLM-R has a 250k-token vocabulary, so projecting every position of a batch onto
it costs more than the whole transformer (and the `(batch, seq, vocab)` tensor dominates memory). Editing losses,
their gradients, locality KLs and predictions only ever read the few target positions, so the output-embedding
layer (`get_output_embeddings()`) is fed just those hidden states. Losses, gradients and argmaxes are the same as
with full logits (up to float rounding); the rest of the model runs unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.encoding import IGNORE_INDEX
from .fast_argmax import argmax_product
from .head_product import head_product, per_weight
from .tasks import check_task


def target_positions(task: str, labels: torch.Tensor) -> torch.Tensor:
    """`(batch, seq)` mask of the positions whose logits predict the target tokens.

    For ``masked_lm`` these are the labelled positions; for ``causal_lm`` token `t` is predicted at `t - 1`.
    """
    keep = labels != IGNORE_INDEX
    if task == "causal_lm":
        if bool(keep[:, 0].any()):
            raise ValueError("causal_lm labels at position 0 have no preceding position to predict them from.")
        keep = torch.cat([keep[:, 1:], torch.zeros_like(keep[:, :1])], dim=1)
    return keep


@contextmanager
def _forward_replaced(head: nn.Module, forward):
    """`head.forward` replaced inside the block; whatever instance attribute was there before is put back."""
    previous = head.__dict__.get("forward")
    head.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def _plain_linear(head: nn.Module) -> bool:
    return type(head) is nn.Linear and "forward" not in head.__dict__


@contextmanager
def _rows_selected(head: nn.Module, keep: torch.Tensor):
    """Feed `head` only the hidden states at `keep` when it is called on `(batch, seq, hidden)` states."""

    def select(module, args):
        hidden = args[0]
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and hidden.shape[:2] == keep.shape:
            return (hidden[keep], *args[1:])
        return None

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def head_at(head: nn.Module, keep: torch.Tensor):
    """Feed `head` only the hidden states at `keep` (a `(batch, seq)` mask) when it is called on `(batch, seq,
    hidden)` states; any other call is left alone. A plain `nn.Linear` head computes those rows' logits with
    [`~hf_lime.head_product.head_product`] (the faster form of the product for this CPU)."""
    plain = _plain_linear(head)
    product = _forward_replaced(head, lambda h: head_product(h, head.weight, head.bias)) if plain else nullcontext()
    with _rows_selected(head, keep), product:
        yield


@contextmanager
def vocabulary_subset(head: nn.Module, vocab_ids: torch.Tensor):
    """Inside the block, the output-embedding layer `head` (an `nn.Linear` onto the vocabulary) projects onto the
    rows `vocab_ids` only, so the logits' last dimension is `len(vocab_ids)` (column `j` is token `vocab_ids[j]`).
    Used to rank candidate objects without the full-vocabulary projection."""
    weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"Restricting the vocabulary needs a Linear output layer, got {type(head).__name__}.")

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        ids = vocab_ids.to(weight.device)
        return F.linear(hidden, weight[ids], None if bias is None else bias[ids])

    with _forward_replaced(head, forward):
        yield


@dataclass
class TargetLogits:
    """Logits at the target positions of a batch, in row-major order.

    Attributes:
        logits (`torch.Tensor`): `(N, vocab)`, one row per target token (`(batch, num_labels)` for classifiers).
        targets (`torch.Tensor`): `(N,)` the target ids (classes).
        counts (`list[int]`): target tokens per batch row (sums to N).
    """

    logits: torch.Tensor
    targets: torch.Tensor
    counts: list[int]

    def loss(self) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (what the transformers LM and classification heads return)."""
        return F.cross_entropy(self.logits.float(), self.targets)

    def detached(self) -> TargetLogits:
        """The same logits, cut from the autograd graph."""
        return TargetLogits(self.logits.detach(), self.targets, self.counts)

    def split_rows(self, n: int) -> tuple[TargetLogits, TargetLogits]:
        """The first `n` batch rows and the rest, as two `TargetLogits`."""
        cut = sum(self.counts[:n])
        head = TargetLogits(self.logits[:cut], self.targets[:cut], self.counts[:n])
        return head, TargetLogits(self.logits[cut:], self.targets[cut:], self.counts[n:])

    def predictions(self) -> list[list[int]]:
        """Argmax ids per row."""
        return [row.tolist() for row in self.logits.argmax(-1).split(self.counts)]

    def row_correct(self, reference: torch.Tensor | None = None) -> list[bool]:
        """Per row: every target token's argmax equals `reference` (defaults to the targets)."""
        reference = self.targets if reference is None else reference
        hits = (self.logits.argmax(-1) == reference).split(self.counts)
        return [bool(row.all()) for row in hits]


def target_logits(model: nn.Module, batch: dict[str, Any], task: str) -> TargetLogits:
    """
    Run `model` on a `batch` with `labels`, computing vocabulary logits at the target positions only (LM tasks).

    Args:
        model (`nn.Module`): A masked LM, causal LM or sequence classifier (a `PeftModel` is fine); it is called
            without `labels`.
        batch (`dict[str, torch.Tensor]`): Padded inputs with `labels` (`-100` off target for LMs, one class per
            row for classifiers).
        task (`str`): `"masked_lm"`, `"causal_lm"` or `"seq_cls"`.

    Returns:
        [`TargetLogits`] (one row per example for classifiers). LMs without an output-embedding layer (or that do
        not call it on the hidden states) still work: their full logits are gathered at the same positions.
    """
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "lang_ids")}
    labels = batch["labels"]
    if task == "seq_cls":
        return TargetLogits(logits=model(**inputs).logits, targets=labels, counts=[1] * labels.shape[0])
    check_task(task)
    keep = target_positions(task, labels)
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX] if task == "causal_lm" else labels[keep]
    logits = logits_at(model, inputs, keep)
    return TargetLogits(logits=logits, targets=targets, counts=keep.sum(dim=1).tolist())


@torch.no_grad()
def hidden_at(model: nn.Module, inputs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor | None:
    """
    The hidden states a masked or causal LM's output layer gets at the positions `keep` (`(keep.sum(), hidden)`,
    row-major), from one forward pass that skips the vocabulary product; `None` when the output layer is not a plain
    `nn.Linear` that the model calls once on the `(batch, seq, hidden)` states.

    Args:
        model (`nn.Module`): The LM (a `PeftModel` is fine), called on `inputs` (no labels).
        inputs (`dict[str, torch.Tensor]`): The padded batch.
        keep (`torch.Tensor`): Boolean `(batch, seq)` positions.
    """
    head = _output_embeddings(model)
    if head is None or not _plain_linear(head):
        return None
    rows = int(keep.sum())
    found: list[torch.Tensor] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 2 or hidden.shape[0] != rows:
            return F.linear(hidden, head.weight, head.bias)
        found.append(hidden)
        return hidden.new_zeros(rows, 1)  # nothing reads it

    with _rows_selected(head, keep), _forward_replaced(head, forward):
        model(**inputs)
    return found[0] if len(found) == 1 else None


def logits_surely_finite(model: nn.Module, inputs: dict[str, Any], keep: torch.Tensor) -> bool | None:
    """
    Whether an LM's vocabulary logits at the positions `keep` are all finite, decided from the hidden states the
    output layer gets, without the vocabulary product: `False` if a hidden state is not finite; `True` if
    `‖h‖₂ · max_v ‖w_v‖₂ + max_v |b_v|` (a bound on every logit, Cauchy–Schwarz) stays below 1 % of the dtype's
    largest value (room for the product's rounding); `None` when this cannot decide (no plain `nn.Linear` output
    layer, or a bound that large): compute the logits.

    The output layer's largest row norm is computed once per weight (kept while the weight is unchanged).
    """
    head = _output_embeddings(model)
    if head is None or not _plain_linear(head):
        return None
    rows = hidden_at(model, inputs, keep)
    if rows is None:
        return None
    if not bool(torch.isfinite(rows).all()):
        return False
    largest_row, largest_bias = _output_sizes(head)
    bound = (float(rows.double().norm(dim=-1).max()) if rows.numel() else 0.0) * largest_row + largest_bias
    return True if bound < 0.01 * torch.finfo(head.weight.dtype).max else None


_SIZES: dict[int, tuple] = {}  # `head_product.per_weight`'s store: id(weight) -> (weakref, stamp, sizes)


def _output_sizes(head: nn.Linear) -> tuple[float, float]:
    """`(max_v ‖w_v‖₂, max_v |b_v|)` of an output layer (float64), cached while its tensors are unchanged
    (`hf_lime.head_product.per_weight`)."""

    def make() -> tuple[float, float]:
        rows = max(float(chunk.double().norm(dim=-1).max()) for chunk in head.weight.detach().split(8192))
        return rows, float(head.bias.detach().double().abs().max()) if head.bias is not None else 0.0

    return per_weight(_SIZES, head.weight, head.bias, make)


def output_layer(model: nn.Module) -> nn.Module | None:
    """The model's output-embedding layer (`get_output_embeddings()` of the base model), if it has one."""
    return _output_embeddings(model)


@torch.no_grad()
def target_predictions(model: nn.Module, batch: dict[str, Any], task: str) -> list[list[int]]:
    """
    The argmax ids at each row's target positions: `target_logits(model, batch, task).predictions()` without the
    float32 logits where the output layer is a plain `nn.Linear` ([`hidden_at`], then
    [`~hf_lime.fast_argmax.argmax_product`]: a checked bfloat16 product where that is faster on this CPU, the same
    ids). Any other head takes `target_logits`.

    Args:
        model (`nn.Module`): A masked or causal LM (a `PeftModel` is fine).
        batch (`dict[str, torch.Tensor]`): Padded inputs with `labels`.
        task (`str`): `"masked_lm"` or `"causal_lm"`.
    """
    check_task(task)
    if task == "seq_cls":
        return target_logits(model, batch, task).predictions()
    keep = target_positions(task, batch["labels"])
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "lang_ids")}
    rows = hidden_at(model, inputs, keep)
    if rows is None:
        return target_logits(model, batch, task).predictions()
    head = _output_embeddings(model)
    ids = argmax_product(rows, head.weight, head.bias)
    return [row.tolist() for row in ids.split(keep.sum(dim=1).tolist())]


def logits_at(model: nn.Module, inputs: dict[str, Any], keep: torch.Tensor, vocab_ids: torch.Tensor | None = None):
    """
    Logits of a masked or causal LM at the positions `keep` (a `(batch, seq)` mask) only, `(keep.sum(), vocab)` in
    row-major order; with `vocab_ids`, over those tokens only (`(keep.sum(), len(vocab_ids))`).

    Args:
        model (`nn.Module`): The LM (a `PeftModel` is fine), called on `inputs` (no labels).
        inputs (`dict[str, torch.Tensor]`): The padded batch.
        keep (`torch.Tensor`): Boolean `(batch, seq)` positions to project.
        vocab_ids (`torch.Tensor`, *optional*): Token ids to project onto; all of them by default.
    """
    head = _output_embeddings(model)
    if head is None:
        logits = model(**inputs).logits[keep]
        return logits if vocab_ids is None else logits[:, vocab_ids.to(logits.device)]
    with head_at(head, keep), vocabulary_subset(head, vocab_ids) if vocab_ids is not None else nullcontext():
        logits = model(**inputs).logits
    if logits.dim() == 3:  # the hook did not fire on the hidden states: gather from the full logits
        logits = logits[keep]
    return logits


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    getter = getattr(base, "get_output_embeddings", None)
    return getter() if callable(getter) else None
