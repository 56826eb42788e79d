"""MEND (Mitchell et al., ICLR 2022): a low-rank hypernetwork that transforms a layer's gradient into its update.

For an edited layer the gradient of the edit loss is `∇W = Σ_t δ_t x_tᵀ`. MEND maps each token's pair `(x_t, δ_t)`
through a small network to `(x̃_t, δ̃_t)` and applies `ΔW = -lr · Σ_t δ̃_t x̃_tᵀ`, which is kept as the rank-`N`
factors `B = -lr · δ̃ᵀ`, `A = x̃`. LiME multiplies `x` and `δ` by the editing language's mask first.

Our networks are residual and identity-initialised around the normalisation, `u + σ ⊙ g((u - μ) / σ)` with the
last projection of `g` zero, so an untrained editor is exactly one gradient step of size `lr`; the correction is
relative to each feature's scale, and the overall magnitude is learned by the per-layer step sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..editing import EditInfo, LayerDelta
from .base import BaseEditor, EditorOutput, LayerSpec


class RunningNorm(nn.Module):
    """Feature-wise running mean / standard deviation over all tokens seen in training."""

    def __init__(self, width: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, u: torch.Tensor) -> None:
        n = u.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = u.mean(0), u.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        ratio = float(n / total)
        self.mean += delta * ratio
        self.var += (batch_var - self.var) * ratio + delta.pow(2) * ratio * (1.0 - ratio)
        self.count.copy_(total)

    def stats(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count.item() == 0:
            mean, var = u.mean(0).detach(), u.var(0, unbiased=False).detach()
        else:
            mean, var = self.mean, self.var
        return mean, (var + self.eps).sqrt()


class LowRankResidual(nn.Module):
    """`h ↦ U relu(V h + b)`: a rank-`r` block whose output projection starts at zero ("id" init)."""

    def __init__(self, width: int, rank: int, init: str = "id") -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width, bias=False)
        if init == "id":
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.up.weight, std=1e-3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(h)))


class GradientTransform(nn.Module):
    """
    One MEND network over inputs of width `width`, shared by `num_layers` layers (each with a scale and shift).

    Args:
        width (`int`): Input width (`d_in + d_out` when combined).
        rank (`int`): Bottleneck width.
        n_hidden (`int`): Number of residual low-rank blocks.
        num_layers (`int`): Layers sharing this network.
        init (`str`): `"id"` or `"random"`.
        norm (`bool`): Normalise inputs with running statistics.
    """

    def __init__(self, width: int, rank: int, n_hidden: int, num_layers: int, init: str, norm: bool) -> None:
        super().__init__()
        self.norm = RunningNorm(width) if norm else None
        self.blocks = nn.ModuleList([LowRankResidual(width, min(rank, width), init) for _ in range(n_hidden)])
        self.layer_scale = nn.Parameter(torch.zeros(num_layers, width))
        self.layer_shift = nn.Parameter(torch.zeros(num_layers, width))

    def forward(self, u: torch.Tensor, layer_index: int) -> torch.Tensor:
        if self.norm is not None:
            if self.training:
                self.norm.update(u.detach())
            mean, std = self.norm.stats(u)
            z = (u - mean) / std
        else:
            std, z = None, u
        z = z * (1.0 + self.layer_scale[layer_index]) + self.layer_shift[layer_index]
        h = z
        for block in self.blocks:
            h = h + block(h)
        # The learned correction is computed in normalised units and mapped back to each feature's scale, so it is
        # relative to the input (stable to train); it starts at exactly zero, so the untrained editor is plain
        # gradient descent. The overall magnitude is learned by the per-layer edit step sizes.
        return u + (h - z) * std if std is not None else u + (h - z)


class MendEditor(BaseEditor):
    """
    MEND as a LIME editor.

    Args:
        layers (`list[LayerSpec]`): The edited layers.
        rank (`int`, *optional*, defaults to `1920`): Bottleneck width (capped at each network's width).
        n_hidden (`int`, *optional*, defaults to `1`): Residual blocks per network.
        init (`str`, *optional*, defaults to `"id"`): `"id"` or `"random"`.
        norm (`bool`, *optional*, defaults to `True`): Running-statistics input normalisation.
        combine (`bool`, *optional*, defaults to `True`): One network over `[x, δ]` instead of one each.
        shared (`bool`, *optional*, defaults to `True`): Share networks across layers of the same shape.

    Example:

    ```py
    >>> from hf_lime.editors import LayerSpec, MendEditor
    >>> editor = MendEditor([LayerSpec("l0", "l0", d_in=8, d_out=16)], rank=4)
    >>> sorted(editor.nets)
    ['8x16']
    ```
    """

    requires_training = True
    uses_masks = True

    def __init__(
        self,
        layers: list[LayerSpec],
        rank: int = 1920,
        n_hidden: int = 1,
        init: str = "id",
        norm: bool = True,
        combine: bool = True,
        shared: bool = True,
    ) -> None:
        super().__init__(layers)
        self.combine = combine
        self._group: dict[str, tuple[str, int]] = {}
        groups: dict[str, list[LayerSpec]] = {}
        for spec in self.layers:
            group = f"{spec.d_in}x{spec.d_out}" if shared else spec.key
            self._group[spec.key] = (group, len(groups.setdefault(group, [])))
            groups[group].append(spec)
        self.nets = nn.ModuleDict()
        for group, specs in groups.items():
            d_in, d_out = specs[0].d_in, specs[0].d_out
            widths = {"xd": d_in + d_out} if combine else {"x": d_in, "d": d_out}
            self.nets[group] = nn.ModuleDict(
                {part: GradientTransform(w, rank, n_hidden, len(specs), init, norm) for part, w in widths.items()}
            )

    def transform(self, key: str, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map one layer's `(x, δ)` (tokens × features) through its network."""
        group, index = self._group[key]
        nets = self.nets[group]
        if self.combine:
            out = nets["xd"](torch.cat([x, delta], dim=-1), index)
            return out[:, : x.shape[1]], out[:, x.shape[1] :]
        return nets["x"](x, index), nets["d"](delta, index)

    def compute_deltas(self, ctx) -> EditorOutput:
        captured = ctx.capture()
        deltas = {}
        for spec in self.layers:
            x, delta = ctx.masked_inputs(spec.key, spec.d_in)
            x_t, delta_t = self.transform(spec.key, x, delta)
            deltas[spec.key] = LayerDelta(B=-ctx.edit_lr(spec.key) * delta_t.T, A=x_t)
        return EditorOutput(deltas=deltas, info=EditInfo(loss_before=captured.loss))


def mend_kwargs(config) -> dict:
    """Constructor arguments of [`MendEditor`] from a `LimeConfig`."""
    return {
        "rank": config.mend_rank,
        "n_hidden": config.mend_n_hidden,
        "init": config.mend_init,
        "norm": config.mend_norm,
        "combine": config.mend_combine,
        "shared": config.mend_shared,
    }
