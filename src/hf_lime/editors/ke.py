"""KnowledgeEditor (De Cao et al., EMNLP 2021, https://arxiv.org/abs/2104.08164): a conditioned gradient rescaling.

A conditioning network reads the edit (its input tokens and its new target) and predicts, per edited layer and per
edit row, a row scale `α` (`d_out`), a column scale `β` (`d_in`), an additive low-rank shift `γ_out γ_inᵀ` and a gate
`η`. With the layer's gradient `∇W = Σ_t δ_t x_tᵀ` the update is

    ΔW = lr · g(η) · ( -diag(α) ∇W diag(β) + γ_out γ_inᵀ ),    g(η) = 2 σ(η),

kept as low-rank factors: one column `-lr g α ⊙ δ_t` / row `β ⊙ x_t` per token, plus `ke_rank` shift columns per row.
`α = d_out · softmax(a)` and `β = d_in · softmax(b)` as in KE; LiME re-weights `x` and `δ` by the editing language's
mask first (per token, exactly where MEND applies it, keeping each token's norm: a mask never resizes an edit).

Initialisation: the heads start at `α = β = 1`, `g = 1` and `γ_out = 0`, so an untrained editor is exactly one
gradient step of size `lr` (the learned per-layer step size).

`conditioner="lstm"` (`LimeConfig(ke_conditioner="lstm")`) builds the LiME reference code's KnowledgeEditor instead:
a bi-LSTM over the edit's input tokens and per-layer heads with its update formula (`hf_lime.editors.ke_reference`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..deltas import EditInfo, LayerDelta
from .base import BaseEditor, EditorOutput, LayerSpec
from .ke_reference import LstmConditioner, ReferenceKnowledgeEditorHead

KE_CONDITIONERS = ("pooled", "lstm")


class KnowledgeEditorHead(nn.Module):
    """
    The per-layer output of KE's conditioning network: scales, gate and shift factors of one edited layer.

    Args:
        hidden_dim (`int`): Width of the conditioning vector.
        d_in (`int`): Input width of the edited layer.
        d_out (`int`): Output width of the edited layer.
        rank (`int`): Rank of the additive shift.
    """

    def __init__(self, hidden_dim: int, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.d_in, self.d_out, self.rank = d_in, d_out, rank
        self.sizes = [d_out, d_in, 1, rank * d_out, rank * d_in]
        self.proj = nn.Linear(hidden_dim, sum(self.sizes))
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.zero_()
            # γ_in starts random (and γ_out at zero) so that the product γ_out γ_inᵀ gets a gradient from step one.
            nn.init.normal_(self.proj.weight[-rank * d_in :], std=hidden_dim**-0.5)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per row of `h` `(n, hidden_dim)`: `alpha (n, d_out)`, `beta (n, d_in)`, `gate (n,)`, shift factors."""
        a, b, eta, g_out, g_in = self.proj(h).split(self.sizes, dim=-1)
        n = h.shape[0]
        return {
            "alpha": self.d_out * a.softmax(-1),
            "beta": self.d_in * b.softmax(-1),
            "gate": 2.0 * torch.sigmoid(eta.squeeze(-1)),
            "shift_out": g_out.reshape(n, self.rank, self.d_out),
            "shift_in": g_in.reshape(n, self.rank, self.d_in),
        }

    def layer_delta(
        self, h: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, lr: torch.Tensor
    ) -> LayerDelta:
        """Gradient part: one rank per token; shift part: `rank` columns per edit row (averaged over rows)."""
        out = self(h)
        step = lr * out["gate"]  # (n,)
        B_grad = -(step[rows, None] * out["alpha"][rows] * delta.to(step.dtype)).T
        A_grad = out["beta"][rows] * x.to(step.dtype)
        n, rank, d_out = out["shift_out"].shape
        shift_scale = (step / n)[:, None, None]
        B_shift = (shift_scale * out["shift_out"]).reshape(n * rank, d_out).T
        A_shift = out["shift_in"].reshape(n * rank, -1)
        return LayerDelta(B=torch.cat([B_grad, B_shift], dim=1), A=torch.cat([A_grad, A_shift], dim=0))


class KnowledgeEditor(BaseEditor):
    """
    KnowledgeEditor as a LIME editor: an edit-conditioned rescaling and shift of each layer's gradient.

    Args:
        layers (`list[LayerSpec]`): The edited layers.
        embedding_dim (`int`): Width of the base model's input embeddings (read from the model by the tuner).
        num_classes (`int`, *optional*, defaults to `0`): Classes of a sequence classifier; a learned class embedding
            represents the target then. `0` for token-level models (masked and causal LMs).
        hidden_dim (`int`, *optional*, defaults to `128`): Width of the conditioning network (`ke_hidden_dim`; with
            `conditioner="lstm"` the hidden width of each LSTM direction and of the heads, 512 in the reference).
        rank (`int`, *optional*, defaults to `1`): Rank of the additive shift per edit row (`ke_rank`; `"pooled"`).
        conditioner (`str`, *optional*, defaults to `"pooled"`): `"pooled"` (this module's KE: pooled input and
            target embeddings, an MLP) or `"lstm"` (the LiME reference's: `hf_lime.editors.ke_reference`).

    Example:

    ```py
    >>> from hf_lime.editors import KnowledgeEditor, LayerSpec
    >>> editor = KnowledgeEditor([LayerSpec("l0", "l0", d_in=8, d_out=16)], embedding_dim=8, hidden_dim=4)
    >>> sorted(editor.heads)
    ['l0']

    ```
    """

    requires_training = True
    uses_masks = True

    def __init__(
        self,
        layers: list[LayerSpec],
        embedding_dim: int,
        num_classes: int = 0,
        hidden_dim: int = 128,
        rank: int = 1,
        conditioner: str = "pooled",
    ) -> None:
        super().__init__(layers)
        if conditioner not in KE_CONDITIONERS:
            raise ValueError(f"`conditioner` must be one of {list(KE_CONDITIONERS)}, got {conditioner!r}.")
        self.conditioner = conditioner
        self.num_classes = int(num_classes)
        if conditioner == "lstm":
            self.class_embedding = None
            self.condition = LstmConditioner(embedding_dim, hidden_dim)
            heads = {s.key: ReferenceKnowledgeEditorHead(embedding_dim, hidden_dim, s.d_in, s.d_out) for s in layers}
        else:
            self.class_embedding = nn.Embedding(num_classes, embedding_dim) if num_classes > 0 else None
            self.condition = nn.Sequential(
                nn.LayerNorm(2 * embedding_dim),
                nn.Linear(2 * embedding_dim, hidden_dim),
                nn.Tanh(),
                nn.Linear(hidden_dim, hidden_dim),
                nn.Tanh(),
            )
            heads = {s.key: KnowledgeEditorHead(hidden_dim, s.d_in, s.d_out, rank) for s in layers}
        self.heads = nn.ModuleDict(heads)

    @classmethod
    def model_kwargs(cls, model: nn.Module) -> dict[str, Any]:
        """The embedding width and, for classifiers (models without output embeddings), the number of classes."""
        get_embeddings = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if callable(get_embeddings) else None
        if embeddings is None or getattr(embeddings, "weight", None) is None:
            raise TypeError(
                f"editor='ke' conditions on the base model's input embeddings, but {type(model).__name__} has no "
                "`get_input_embeddings()` returning an embedding layer; use editor='mend' or 'ft'."
            )
        get_output = getattr(model, "get_output_embeddings", None)
        is_classifier = callable(get_output) and get_output() is None
        num_labels = getattr(getattr(model, "config", None), "num_labels", 0)
        return {"embedding_dim": embeddings.weight.shape[1], "num_classes": num_labels if is_classifier else 0}

    def condition_vectors(self, ctx) -> torch.Tensor:
        """One conditioning vector per edit row: from the pooled input embeddings and the pooled target
        (`"pooled"`), or from the input tokens read by the bi-LSTM (`"lstm"`)."""
        batch = ctx.batch
        input_ids, labels = batch["input_ids"], batch["labels"]
        weight = next(self.condition.parameters())
        with torch.no_grad():
            tokens = ctx.input_embeddings(input_ids).detach().to(weight.dtype)
        attention = batch.get("attention_mask")
        attention = torch.ones_like(input_ids) if attention is None else attention
        if self.conditioner == "lstm":
            return self.condition(tokens.to(weight.device), attention.to(weight.device))
        source = _masked_mean(tokens, attention.to(tokens.device))
        if labels.dim() == 1:
            target = self._class_vectors(labels.to(weight.device))
        else:
            with torch.no_grad():
                target_tokens = ctx.input_embeddings(labels.clamp(min=0)).detach().to(weight.dtype)
            target = _masked_mean(target_tokens, (labels != -100).to(tokens.device))
        return self.condition(torch.cat([source.to(weight.device), target.to(weight.device)], dim=-1))

    def _class_vectors(self, labels: torch.Tensor) -> torch.Tensor:
        if self.class_embedding is None:
            raise ValueError(
                "Got one class label per row, but this KnowledgeEditor was built for a token-level model (masked or "
                "causal LM): pass token `labels` of the shape of `input_ids`."
            )
        if (labels >= self.num_classes).any():
            raise ValueError(f"Class labels {labels.tolist()} out of range for {self.num_classes} classes.")
        return self.class_embedding(labels)

    def compute_deltas(self, ctx) -> EditorOutput:
        h = self.condition_vectors(ctx)  # first: it checks the labels against the model kind
        captured = ctx.capture()
        deltas = {}
        for spec in self.layers:
            tokens = ctx.masked_inputs(spec.key, spec.d_in)
            rows = tokens.rows.to(h.device)
            deltas[spec.key] = self.heads[spec.key].layer_delta(h, rows, tokens.x, tokens.delta, ctx.edit_lr(spec.key))
        return EditorOutput(deltas=deltas, info=EditInfo(loss_before=captured.loss))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` `(n, T, d)` over the positions where `mask` `(n, T)` is non-zero."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def ke_kwargs(config) -> dict:
    """Constructor arguments of [`KnowledgeEditor`] from a `LimeConfig` (the model-side ones come from the model)."""
    return {"hidden_dim": config.ke_hidden_dim, "rank": config.ke_rank, "conditioner": config.ke_conditioner}
