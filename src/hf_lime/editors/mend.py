"""MEND (Mitchell et al., ICLR 2022) as the LiME reference code builds it: a low-rank hypernetwork that maps a layer's
per-token gradient factors to its update.

For an edited layer the gradient of the edit loss is `∇W = Σ_t δ_t x_tᵀ` (layer input `x_t`, gradient at the layer
output `δ_t`). Per edited layer, MEND

1. keeps the tokens whose `x_t` and `δ_t` are both non-zero (in the top block only the target positions have a
   gradient);
2. multiplies them by the editing language's LiME mask (`EditContext.masked_inputs`, before any normalisation);
3. normalises each token's `x_t` and `δ_t` with a LayerNorm (learnable gain and bias): the raw gradient's scale is
   discarded, so a uniform mask cancels and the learned per-layer step size alone sets an edit's size. Before the
   LayerNorm, each edit row's `x` and `δ` are divided by their root mean square over the row's tokens: the
   LayerNorm's epsilon is then relative to the edit (a gradient of a few 1e-3 would otherwise be only partly
   normalised by an epsilon of 1e-5, and the edit's size would follow the loss's units), while tokens with a far
   smaller gradient than the row's dominant ones stay small. With `center=True` (not in the reference) each layer's
   `x` is first centred on the running mean of the inputs seen in training: the component that every prompt shares
   (the template, the language) no longer carries the edit to unrelated inputs;
4. maps `[x̂_t, δ̂_t]` through residual low-rank blocks `h + relu((U V h + b) ⊙ s_l + t_l)` (one network per layer
   shape, shared by the layers of that shape with a per-layer scale `s_l` and shift `t_l`; `U = 0` at init);
5. applies `ΔW = -lr_l · Σ_t δ̃_t x̃_tᵀ`, kept as the rank-`N` factors `B = -lr_l · δ̃ᵀ`, `A = x̃`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..deltas import SOLVE_KEYS, SOLVE_POSITIONS, EditInfo, LayerDelta
from .base import BaseEditor, EditorOutput, LayerSpec
from .lowered import LoweredWeights, lowered_low_rank

COMPUTE_DTYPES = ("float32", "bfloat16")


class LowRankBlock(nn.Module):
    """
    `h ↦ h + relu((U V h + b) ⊙ scale[l] + shift[l])`: a residual rank-`r` block with a per-layer scale and shift.

    `U` starts at zero, so the block starts as the identity (the reference's "id" init); `"random"` starts it with a
    small random `U`. `V` starts standard normal, as in the reference (its learning rates assume that scale).

    Args:
        width (`int`): Input and output width.
        rank (`int`): Bottleneck width (capped at `width`).
        num_layers (`int`): Layers sharing the block (rows of `scale` and `shift`).
        init (`str`): `"id"` or `"random"`.
        compute_dtype (`str`): `"float32"`, or `"bfloat16"`: the products `U V h` (and their gradients) in bfloat16
            from float32 weights (`editors/lowered.py`); the bias, scale, shift and residual stay float32.
    """

    def __init__(
        self, width: int, rank: int, num_layers: int, init: str = "id", compute_dtype: str = "float32"
    ) -> None:
        super().__init__()
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"`compute_dtype` must be one of {list(COMPUTE_DTYPES)}, got {compute_dtype!r}.")
        self.compute_dtype = compute_dtype
        self._lowered = LoweredWeights()
        rank = min(rank, width)
        self.down = nn.Parameter(torch.randn(rank, width))
        self.up = nn.Parameter(torch.zeros(width, rank) if init == "id" else torch.randn(width, rank) * 1e-3)
        self.bias = nn.Parameter(torch.zeros(width))
        self.layer_scale = nn.Parameter(torch.ones(num_layers, width))
        self.layer_shift = nn.Parameter(torch.zeros(num_layers, width))

    def forward(self, h: torch.Tensor, layer_index: int | torch.Tensor) -> torch.Tensor:
        """`layer_index`: the layer of every row (an `int`, or one index per row of `h`)."""
        if self.compute_dtype == "bfloat16":
            pre = lowered_low_rank(h, self.down, self.up, self._lowered) + self.bias
        else:
            pre = (h @ self.down.T) @ self.up.T + self.bias
        pre = pre * self.layer_scale[layer_index] + self.layer_shift[layer_index]
        # clamp, not relu: its gradient at exactly 0 is 1, so the zero-initialised `up` learns from the first step
        return h + pre.clamp(min=0)


class GradientTransform(nn.Module):
    """
    One MEND network for layers of shape `(d_out, d_in)`: per-token LayerNorms of `x` and `δ`, then residual
    low-rank blocks over `[x̂, δ̂]` (or one stack each when `combine=False`).

    Args:
        d_in (`int`): Input width of the edited layers.
        d_out (`int`): Output width of the edited layers.
        rank (`int`): Bottleneck width of each block.
        n_hidden (`int`): The reference's `n_hidden`: each stack has `n_hidden + 1` blocks.
        num_layers (`int`): Layers sharing this network.
        init (`str`): `"id"` or `"random"`.
        norm (`bool`): Per-token LayerNorm of `x` and `δ` (learnable gain and bias); `False` feeds the raw values.
        combine (`bool`): One stack over the concatenation `[x̂, δ̂]` instead of one stack each.
        norm_eps (`float`): The LayerNorms' epsilon.
        center (`bool`): Subtract from each layer's `x` the running mean of the `x` seen in training (per feature).
        compute_dtype (`str`): The blocks' products: `"float32"` or `"bfloat16"` (see [`LowRankBlock`]).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        rank: int,
        n_hidden: int,
        num_layers: int,
        init: str = "id",
        norm: bool = True,
        combine: bool = True,
        norm_eps: float = 1e-5,
        center: bool = False,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.d_in, self.combine, self.center = d_in, combine, center
        if center:
            self.register_buffer("x_mean", torch.zeros(num_layers, d_in))
            self.register_buffer("x_count", torch.zeros(num_layers, dtype=torch.float64))
        self.norm_x = nn.LayerNorm(d_in, eps=norm_eps) if norm else nn.Identity()
        self.norm_delta = nn.LayerNorm(d_out, eps=norm_eps) if norm else nn.Identity()
        widths = {"xd": d_in + d_out} if combine else {"x": d_in, "d": d_out}
        self.stacks = nn.ModuleDict(
            {
                part: nn.ModuleList(
                    [LowRankBlock(w, rank, num_layers, init, compute_dtype) for _ in range(n_hidden + 1)]
                )
                for part, w in widths.items()
            }
        )

    def _run(self, part: str, h: torch.Tensor, layer_index: int | torch.Tensor) -> torch.Tensor:
        for block in self.stacks[part]:
            h = block(h, layer_index)
        return h

    @torch.no_grad()
    def _update_mean(self, x: torch.Tensor, layer_index: int) -> None:
        if x.shape[0] == 0:
            return
        total = self.x_count[layer_index] + x.shape[0]
        ratio = float(x.shape[0] / total)
        self.x_mean[layer_index] += (x.mean(0).to(self.x_mean.dtype) - self.x_mean[layer_index]) * ratio
        self.x_count[layer_index] = total

    def centered(self, x: torch.Tensor, layer_index: int) -> torch.Tensor:
        """`x` minus the running mean of the training inputs of that layer (updated in training mode)."""
        if not self.center:
            return x
        if self.training:
            self._update_mean(x.detach(), layer_index)
        return x - self.x_mean[layer_index].to(x.dtype)

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor, layer_index: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x̃, δ̃)` for the tokens' `(x, δ)` (tokens × features, already centred and scaled); `layer_index` is the
        layer of every token (an `int`, or one index per token: the tokens of several layers in one batch)."""
        x_hat, delta_hat = self.norm_x(x), self.norm_delta(delta)
        if self.combine:
            out = self._run("xd", torch.cat([x_hat, delta_hat], dim=-1), layer_index)
            return out[:, : self.d_in], out[:, self.d_in :]
        return self._run("x", x_hat, layer_index), self._run("d", delta_hat, layer_index)


class MendEditor(BaseEditor):
    """
    MEND as a LIME editor, built as the LiME reference code builds it (see the module docstring).

    Args:
        layers (`list[LayerSpec]`): The edited layers.
        rank (`int`, *optional*, defaults to `1920`): Bottleneck width of each block (capped at the network width).
        n_hidden (`int`, *optional*, defaults to `1`): The reference's `n_hidden`: `n_hidden + 1` residual blocks.
        init (`str`, *optional*, defaults to `"id"`): `"id"` (blocks start as the identity) or `"random"`.
        norm (`bool`, *optional*, defaults to `True`): Per-token LayerNorm of `x` and `δ` before the blocks.
        combine (`bool`, *optional*, defaults to `True`): One network over `[x̂, δ̂]` instead of one each.
        shared (`bool`, *optional*, defaults to `True`): Share networks across layers of the same shape.
        norm_eps (`float`, *optional*, defaults to `1e-5`): Epsilon of the LayerNorms.
        center (`bool`, *optional*, defaults to `False`): Centre each layer's inputs `x` on their running training
            mean before the normalisation (not in the reference; see `docs/editors.md`).
        compute_dtype (`str`, *optional*, defaults to `"float32"`): `"bfloat16"` runs the blocks' matrix products in
            bfloat16 from float32 weights (faster on CPUs with AMX and on GPUs; see `LimeConfig.mend_compute_dtype`).

    Example:

    ```py
    >>> from hf_lime.editors import LayerSpec, MendEditor
    >>> editor = MendEditor([LayerSpec("l0", "l0", d_in=8, d_out=16), LayerSpec("l1", "l1", d_in=8, d_out=16)], rank=4)
    >>> sorted(editor.nets), len(editor.nets["8x16"].stacks["xd"])
    (['8x16'], 2)

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
        norm_eps: float = 1e-5,
        center: bool = False,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__(layers)
        self._group: dict[str, tuple[str, int]] = {}
        groups: dict[str, list[LayerSpec]] = {}
        for spec in self.layers:
            group = f"{spec.d_in}x{spec.d_out}" if shared else spec.key
            self._group[spec.key] = (group, len(groups.setdefault(group, [])))
            groups[group].append(spec)
        options = {"init": init, "norm": norm, "combine": combine, "norm_eps": norm_eps, "center": center,
                   "compute_dtype": compute_dtype}  # fmt: skip
        self.nets = nn.ModuleDict(
            {
                group: GradientTransform(specs[0].d_in, specs[0].d_out, rank, n_hidden, len(specs), **options)
                for group, specs in groups.items()
            }
        )

    def transform(self, key: str, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map one layer's `(x, δ)` (tokens × features) through its network."""
        group, index = self._group[key]
        return self.nets[group](x, delta, index)

    def compute_deltas(self, ctx) -> EditorOutput:
        """The layers sharing a network go through it in one batch (one weight gradient per parameter in training,
        instead of one per layer summed): the same values as one call per layer."""
        captured = ctx.capture()
        inputs: dict[str, list[tuple[LayerSpec, torch.Tensor, torch.Tensor]]] = {}
        for spec in self.layers:
            tokens = ctx.masked_inputs(spec.key, spec.d_in)
            group, index = self._group[spec.key]
            net = self.nets[group]
            dtype = next(net.parameters()).dtype  # the networks' dtype, whatever the base model's (e.g. float64)
            x = net.centered(tokens.x.to(dtype), index)
            x, delta = _per_row_rms_scaled(x, tokens.rows), _per_row_rms_scaled(tokens.delta.to(dtype), tokens.rows)
            inputs.setdefault(group, []).append((spec, x, delta))
        deltas = {}
        for group, parts in inputs.items():
            counts = [x.shape[0] for _, x, _ in parts]
            index = torch.cat([torch.full((x.shape[0],), self._group[spec.key][1]) for spec, x, _ in parts])
            x_all = torch.cat([x for _, x, _ in parts])
            x_t, delta_t = self.nets[group](x_all, torch.cat([d for _, _, d in parts]), index.to(x_all.device))
            for (spec, _, _), x_l, delta_l in zip(parts, x_t.split(counts), delta_t.split(counts), strict=True):
                deltas[spec.key] = LayerDelta(B=-ctx.edit_lr(spec.key) * delta_l.T, A=x_l)
        deltas = {spec.key: deltas[spec.key] for spec in self.layers}  # in layer order
        info = EditInfo(loss_before=captured.loss)
        if not torch.is_grad_enabled():  # an edit (not a training episode): keep the keys `combine="solve"` reads
            info.extra[SOLVE_KEYS] = {spec.key: _edit_keys(captured, spec.key) for spec in self.layers}
            info.extra[SOLVE_POSITIONS] = {spec.key: _key_positions(captured, spec.key) for spec in self.layers}
        return EditorOutput(deltas=deltas, info=info)


def _kept(captured, key: str) -> torch.Tensor:
    """The captured tokens MEND maps at layer `key`: a non-zero input and gradient (`EditContext.masked_inputs`)."""
    return (captured.inputs[key] != 0).any(-1) & (captured.grads[key] != 0).any(-1)


def _edit_keys(captured, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw layer inputs and rows of the tokens MEND maps."""
    keep = _kept(captured, key)
    return captured.inputs[key][keep].detach(), captured.token_rows.to(keep.device)[keep]


def _key_positions(captured, key: str) -> torch.Tensor:
    """The indices of `_edit_keys`' tokens among the edit batch's attended tokens."""
    return _kept(captured, key).nonzero().squeeze(1)


def _per_row_rms_scaled(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`values` (tokens × features) divided by the root mean square of the tokens of their batch row."""
    if values.shape[0] == 0:
        return values
    rows = rows.to(values.device)
    n_rows = int(rows.max()) + 1
    squares = values.detach().pow(2).mean(-1)
    sums = squares.new_zeros(n_rows).index_add_(0, rows, squares)
    counts = squares.new_zeros(n_rows).index_add_(0, rows, torch.ones_like(squares))
    rms = (sums / counts.clamp_min(1.0)).sqrt().clamp_min(torch.finfo(values.dtype).tiny)
    return values / rms[rows, None]


def mend_kwargs(config) -> dict:
    """Constructor arguments of [`MendEditor`] from a `LimeConfig`."""
    return {
        "rank": config.mend_rank,
        "n_hidden": config.mend_n_hidden,
        "init": config.mend_init,
        "norm": config.mend_norm,
        "combine": config.mend_combine,
        "shared": config.mend_shared,
        "norm_eps": config.mend_norm_eps,
        "center": config.mend_center,
        "compute_dtype": config.mend_compute_dtype,
    }
