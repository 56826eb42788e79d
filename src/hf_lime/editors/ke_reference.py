"""The LiME reference code's KnowledgeEditor parts (`ke_conditioner="lstm"`; franklear/LiME `algs/efk.py`, after De Cao
et al.'s `one_shot_learner.py`): a bi-LSTM conditioner over the edit's input tokens and one conditioned head per
edited layer with the reference's update formula.

Per edit row, the conditioner reads the input tokens' embeddings with a bidirectional LSTM (final states of both
directions) and a `tanh` layer into a condition vector `c`. Per edited layer `W` `(d_out, d_in)`, a head (two
weight-normalised linear layers with a `tanh` between) maps `c` to `a_row (d_out)`, `a_col (d_in)`, `b_row (d_out)`,
`b_col (d_in)` and `η`, and

    ΔW = lr · σ(η) · ( ∇W ⊙ softmax(a_row) a_colᵀ + softmax(b_row) b_colᵀ ),

with `∇W = Σ_t δ_t x_tᵀ` the layer's gradient (after the LiME mask). The sign of the step is learned (`a_col` is
unconstrained), as in the reference; `lr` is the layer's learned step size, the reference's `max_scale = 1` with
`edit_lr_init=1`. Kept as low-rank factors: `∇W ⊙ u vᵀ = Σ_t (δ_t ⊙ u)(x_t ⊙ v)ᵀ`, one rank per token plus one per
edit row (the reference edits one row at a time; with several rows their shifts are averaged, as in our KE).

One deviation: the reference trains its own copy of the word-embedding matrix inside the conditioner (92 M parameters
for mBERT); here the conditioner reads the base model's input embeddings, frozen.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..deltas import LayerDelta


class LstmConditioner(nn.Module):
    """
    The reference's condition network: a bidirectional LSTM over the input tokens' embeddings, then `tanh(Linear)`.

    Args:
        embedding_dim (`int`): Width of the token embeddings (and of the condition vector).
        hidden_dim (`int`): Hidden width of each LSTM direction.
    """

    def __init__(self, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers=1, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * hidden_dim, embedding_dim)

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(n, T, d)` embeddings and `(n, T)` mask → `(n, d)`: the final states of both directions of each row."""
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(embeddings, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden: (2, n, hidden_dim), rows in the input order
        return torch.tanh(self.out(torch.cat([hidden[0], hidden[1]], dim=-1)))


class ReferenceKnowledgeEditorHead(nn.Module):
    """
    The reference's conditioned parameter of one edited layer: `c ↦ (a_row, a_col, b_row, b_col, η)`.

    Args:
        condition_dim (`int`): Width of the condition vector.
        hidden_dim (`int`): Hidden width.
        d_in (`int`): Input width of the edited layer.
        d_out (`int`): Output width of the edited layer.
    """

    def __init__(self, condition_dim: int, hidden_dim: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.sizes = [d_in, d_out, d_in, d_out, 1]
        self.net = nn.Sequential(
            weight_norm(nn.Linear(condition_dim, hidden_dim)),
            nn.Tanh(),
            weight_norm(nn.Linear(hidden_dim, sum(self.sizes))),
        )

    def layer_delta(
        self, c: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, lr: torch.Tensor
    ) -> LayerDelta:
        """`ΔW` of the module docstring for the tokens `(x, δ)` of the edit rows `rows`, as low-rank factors."""
        a_col, a_row, b_col, b_row, eta = self.net(c).split(self.sizes, dim=-1)
        scale = lr * torch.sigmoid(eta.squeeze(-1))  # (n,)
        u, b_u = a_row.softmax(-1), b_row.softmax(-1)
        B_grad = (scale[rows, None] * u[rows] * delta.to(u.dtype)).T
        A_grad = a_col[rows] * x.to(u.dtype)
        B_shift = (scale[:, None] * b_u / c.shape[0]).T  # one shift per edit row, averaged over the rows
        return LayerDelta(B=torch.cat([B_grad, B_shift], dim=1), A=torch.cat([A_grad, b_col], dim=0))
