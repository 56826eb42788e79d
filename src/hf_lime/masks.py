"""LiME's language-specific masks: hard-concrete gates (Louizos et al., 2018) with one row per language.

A mask for an edited layer of shape `(d_out, d_in)` has width `d_in + d_out`: the first `d_in` entries scale the
layer input `x`, the last `d_out` the output gradient `delta`. The editor sees `x * (offset + s * z)`, where `z` is
the gate (sampled per token in training, deterministic in evaluation) and `s` a learned scale initialised to 1.
The editors apply it through `EditContext.masked_inputs`, which keeps each token's norm: a mask re-weights features,
it never resizes an edit (the LiME reference gets the same from the LayerNorm that follows its mask in MEND).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_ALPHA_LIMIT = 10.0


class HardConcreteGate(nn.Module):
    """
    A bank of hard-concrete gates, one row of `width` gates per language.

    Args:
        num_languages (`int`): Number of rows (languages).
        width (`int`): Gates per row.
        temperature (`float`, *optional*, defaults to `2/3`): Temperature `beta` of the concrete distribution.
        stretch (`tuple[float, float]`, *optional*, defaults to `(-0.1, 1.1)`): Stretch limits `(gamma, zeta)`.
        init_drop_rate (`float`, *optional*, defaults to `0.5`): Initial probability that a gate is closed.

    Example:

    ```py
    >>> import torch
    >>> gate = HardConcreteGate(num_languages=2, width=4)
    >>> gate.eval()(torch.tensor([0, 1, 1])).shape
    torch.Size([3, 4])

    ```
    """

    def __init__(
        self,
        num_languages: int,
        width: int,
        temperature: float = 2.0 / 3.0,
        stretch: tuple[float, float] = (-0.1, 1.1),
        init_drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.gamma, self.zeta = float(stretch[0]), float(stretch[1])
        init = math.log(1.0 - init_drop_rate) - math.log(init_drop_rate)
        self.log_alpha = nn.Parameter(torch.full((num_languages, width), init))

    def _clamped_log_alpha(self, lang_ids: torch.Tensor) -> torch.Tensor:
        return self.log_alpha[lang_ids].clamp(-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)

    def forward(self, lang_ids: torch.Tensor) -> torch.Tensor:
        """Gates for each entry of `lang_ids` (one row per token): sampled in training, deterministic in eval."""
        if not self.training:
            return self.eval_gates(lang_ids)
        log_alpha = self._clamped_log_alpha(lang_ids)
        u = torch.rand_like(log_alpha).clamp(1e-6, 1.0 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.temperature)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def eval_gates(self, lang_ids: torch.Tensor) -> torch.Tensor:
        """The deterministic gates of evaluation, one row per entry of `lang_ids`."""
        s = torch.sigmoid(self._clamped_log_alpha(lang_ids))
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def expected_l0(self, lang_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean probability that a gate is non-zero (differentiable in `log_alpha`), over the given rows or all."""
        log_alpha = self.log_alpha if lang_ids is None else self.log_alpha[lang_ids]
        log_alpha = log_alpha.clamp(-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)
        shift = self.temperature * math.log(-self.gamma / self.zeta)
        return torch.sigmoid(log_alpha - shift).mean()


class LanguageMask(nn.Module):
    """
    The LiME mask of one edited layer: `offset + s * z` per language, of width `d_in + d_out`.

    Args:
        num_languages (`int`): Number of languages (mask rows).
        width (`int`): `d_in + d_out` of the edited layer.
        use_l0 (`bool`, *optional*, defaults to `True`): Hard-concrete gates `z`; `False` uses `z = 1`, i.e. a
            plain learned scale per language and feature.
        offset (`float`, *optional*, defaults to `1.0`): Constant added to the mask.
        temperature, stretch, init_drop_rate: see [`HardConcreteGate`].

    Example:

    ```py
    >>> import torch
    >>> mask = LanguageMask(num_languages=3, width=6).eval()
    >>> mask(torch.tensor([2, 2])).shape
    torch.Size([2, 6])

    ```
    """

    def __init__(
        self,
        num_languages: int,
        width: int,
        use_l0: bool = True,
        offset: float = 1.0,
        temperature: float = 2.0 / 3.0,
        stretch: tuple[float, float] = (-0.1, 1.1),
        init_drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        self.offset = float(offset)
        self.scale = nn.Parameter(torch.ones(num_languages, width))
        self.gate = HardConcreteGate(num_languages, width, temperature, stretch, init_drop_rate) if use_l0 else None

    def forward(self, lang_ids: torch.Tensor) -> torch.Tensor:
        """Multiplicative mask, one row per entry of `lang_ids`."""
        scale = self.scale[lang_ids]
        if self.gate is None:
            return self.offset + scale
        return self.offset + scale * self.gate(lang_ids)

    @torch.no_grad()
    def mean_gate(self) -> torch.Tensor:
        """Mean deterministic (evaluation) gate value per row, `(rows,)`; ones without gates."""
        if self.gate is None:
            return self.scale.new_ones(self.scale.shape[0])
        rows = torch.arange(self.scale.shape[0], device=self.scale.device)
        return self.gate.eval_gates(rows).mean(-1)

    def l0_penalty(self, lang_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Expected L0 norm of the gates (0 without gates)."""
        if self.gate is None:
            return self.scale.new_zeros(())
        return self.gate.expected_l0(lang_ids)


MASK_SCOPES = ("language", "shared")


class MaskBank(nn.Module):
    """
    One [`LanguageMask`] per edited layer, keyed by the layer key. An empty bank means LiME is off.

    Args:
        widths (`dict[str, int]`): Layer key -> `d_in + d_out`.
        num_languages (`int`): Number of languages.
        scope (`str`, *optional*, defaults to `"language"`): `"language"` gives each language its own mask row;
            `"shared"` gives all languages one row (the control that tells a language-specific mask from "a mask").
        **mask_kwargs: Passed to [`LanguageMask`].
    """

    def __init__(self, widths: dict[str, int], num_languages: int, scope: str = "language", **mask_kwargs) -> None:
        super().__init__()
        if scope not in MASK_SCOPES:
            raise ValueError(f"`scope` must be one of {list(MASK_SCOPES)}, got {scope!r}.")
        self.scope = scope
        rows = 1 if scope == "shared" else num_languages
        self.masks = nn.ModuleDict({key: LanguageMask(rows, w, **mask_kwargs) for key, w in widths.items()})

    @property
    def enabled(self) -> bool:
        return len(self.masks) > 0

    def rows(self, lang_ids: torch.Tensor) -> torch.Tensor:
        """The mask row of each language id (all zero for a shared mask)."""
        return torch.zeros_like(lang_ids) if self.scope == "shared" else lang_ids

    def split(self, key: str, lang_ids: torch.Tensor, d_in: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The input part `(N, d_in)` and gradient part `(N, d_out)` of the mask of layer `key`, or `None`."""
        if key not in self.masks:
            return None
        mask = self.masks[key](self.rows(lang_ids))
        return mask[:, :d_in], mask[:, d_in:]

    def l0_penalty(self, lang_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean expected L0 over the layers' gates (a differentiable scalar; 0 when LiME is off)."""
        if not self.enabled:
            return torch.zeros(())
        rows = None if lang_ids is None else self.rows(lang_ids)
        penalties = [mask.l0_penalty(rows) for mask in self.masks.values()]
        return torch.stack(penalties).mean()

    @torch.no_grad()
    def mean_gates(self) -> torch.Tensor:
        """Mean deterministic gate value per mask row over every layer (`(rows,)`; empty when LiME is off)."""
        values = [mask.mean_gate() for mask in self.masks.values()]
        return torch.stack(values).mean(0) if values else torch.zeros(0)
