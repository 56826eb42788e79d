"""`LimeConfig`: the configuration of the PEFT method "LIME" (cross-lingual model editors with language masks)."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from ..editors.ft import OPTIMIZERS as FT_OPTIMIZERS
from ..editors.ke import KE_CONDITIONERS
from ..editors.mend import COMPUTE_DTYPES as MEND_COMPUTE_DTYPES
from ..languages import check_languages
from ..masks import MASK_SCOPES

PEFT_TYPE = "LIME"
EDITORS = ("mend", "ke", "ft")

# Feed-forward linears per model family (`config.model_type`). Only the layer *kind* is chosen here; which layers
# are edited is `layers_to_transform` (by default the top `num_top_layers`).
TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    "bert": ["intermediate.dense", "output.dense"],
    "roberta": ["intermediate.dense", "output.dense"],
    "xlm-roberta": ["intermediate.dense", "output.dense"],
    "camembert": ["intermediate.dense", "output.dense"],
    "electra": ["intermediate.dense", "output.dense"],
    "distilbert": ["ffn.lin1", "ffn.lin2"],
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
    "bloom": ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    "opt": ["fc1", "fc2"],
    "llama": ["mlp.up_proj", "mlp.down_proj"],
    "mistral": ["mlp.up_proj", "mlp.down_proj"],
    "qwen2": ["mlp.up_proj", "mlp.down_proj"],
    "qwen3": ["mlp.up_proj", "mlp.down_proj"],
    "gemma": ["mlp.up_proj", "mlp.down_proj"],
    "gemma2": ["mlp.up_proj", "mlp.down_proj"],
    "mt5": ["DenseReluDense.wi_0", "DenseReluDense.wo"],
    "t5": ["DenseReluDense.wi", "DenseReluDense.wo"],
}


@dataclass
class LimeConfig(PeftConfig):
    """
    Configuration of a LIME adapter: a learned cross-lingual model editor (MEND, KnowledgeEditor or fine-tuning)
    attached to a base model's feed-forward layers, with LiME's language-specific hard-concrete masks on the
    editor's inputs. Paper: https://huggingface.co/papers/2205.12677.

    Parameters that choose what is edited:

    Args:
        target_modules (`list[str]` or `str`, *optional*, defaults to `None`):
            Names (suffixes) or a regex of the `nn.Linear`/`Conv1D` modules to edit. `None` picks the feed-forward
            linears of the model family (`intermediate.dense`/`output.dense` for BERT and XLM-R, `mlp.c_fc`/
            `mlp.c_proj` for GPT-2, `mlp.up_proj`/`mlp.down_proj` for Llama-style models...).
        layers_to_transform (`list[int]` or `int`, *optional*, defaults to `None`):
            Indices of the transformer blocks to edit. `None` means the top `num_top_layers` blocks; the resolved
            list is written back here and saved.
        layers_pattern (`str` or `list[str]`, *optional*, defaults to `None`):
            Name of the `nn.ModuleList` holding the blocks (`"layer"`, `"h"`, `"layers"`), when the default
            detection of the block index is ambiguous.
        num_top_layers (`int`, *optional*, defaults to `3`):
            How many of the top blocks to edit when `layers_to_transform` is `None`.
        fan_in_fan_out (`bool`, *optional*, defaults to `False`):
            Set to `True` when the edited layers store weights as `(fan_in, fan_out)`, like GPT-2's `Conv1D`. It is
            switched on automatically (with a warning) when a `Conv1D` is found.

    Parameters of the editor:

    Args:
        languages (`list[str]`, *optional*, defaults to `[]`):
            Ordered language codes the editor knows. The position of a language is its mask row; the list is saved
            with the adapter so that a reloaded editor maps languages to the same rows. Required when
            `use_lime_mask=True`.
        editor (`str`, *optional*, defaults to `"mend"`):
            The editing algorithm: `"mend"` (gradient-transform hypernetwork), `"ke"` (KnowledgeEditor) or `"ft"`
            (fine-tuning baseline, needs no training).
        edit_lr_init (`float`, *optional*, defaults to `1e-4`):
            Initial value of the learned per-layer edit step size.
        mend_rank (`int`, *optional*, defaults to `1920`):
            Width of MEND's low-rank bottleneck (capped at the input width of each network).
        mend_n_hidden (`int`, *optional*, defaults to `1`):
            The reference's `n_hidden`: each MEND network has `mend_n_hidden + 1` residual low-rank blocks.
        mend_init (`str`, *optional*, defaults to `"id"`):
            `"id"` initialises every block to the identity (an untrained editor applies the normalised factors);
            `"random"` initialises the blocks' output projections randomly.
        mend_norm (`bool`, *optional*, defaults to `True`):
            Normalise each token's layer input and output gradient with a LayerNorm (learnable gain and bias) before
            the network, as the reference does: the raw gradient's scale is discarded and the learned step sizes
            alone set an edit's size. `False` feeds the raw values.
        mend_norm_eps (`float`, *optional*, defaults to `1e-5`):
            Epsilon of those LayerNorms (PyTorch's and the reference's default).
        mend_center (`bool`, *optional*, defaults to `False`):
            Centre each edited layer's inputs on their running mean over the training episodes before the
            normalisation (not in the reference): the component every prompt shares then no longer spreads an edit
            to unrelated inputs. Measured in `docs/editors.md`; statistics are gathered in training mode only.
        mend_combine (`bool`, *optional*, defaults to `True`):
            One network over the concatenated layer input and output gradient (`True`) or one network each.
        mend_shared (`bool`, *optional*, defaults to `True`):
            Share networks between edited layers of the same shape, with a learned per-layer scale and shift.
        mend_compute_dtype (`str`, *optional*, defaults to `"float32"`):
            Precision of the matrix products inside MEND's networks. `"bfloat16"` runs the low-rank products and
            their gradient products in bfloat16 from float32 weights (`editors/lowered.py`; the weights, their
            gradients, the LayerNorms and the residual stream stay float32). Measured in `docs/benchmarks.md`: on a
            CPU with AMX the networks' forward halves, their backward does not; on a CPU without bfloat16 units it is
            slower. The base model is never affected.
        ke_hidden_dim (`int`, *optional*, defaults to `128`):
            Width of KnowledgeEditor's conditioning network.
        ke_rank (`int`, *optional*, defaults to `1`):
            Rank of KnowledgeEditor's additive shift term.
        ke_conditioner (`str`, *optional*, defaults to `"pooled"`):
            `"pooled"`: hf_lime's KnowledgeEditor (pooled input and target embeddings into an MLP, positive scales,
            starts as one gradient step). `"lstm"`: the LiME reference code's (a bi-LSTM over the edit's input
            tokens, weight-normalised per-layer heads, its update formula; `ke_hidden_dim` is then the LSTM's and the
            heads' hidden width, 512 in the reference).
        ft_steps (`int`, *optional*, defaults to `10`):
            Maximum number of optimisation steps of the fine-tuning editor.
        ft_lr (`float`, *optional*, defaults to `1e-3`):
            Step size of the fine-tuning editor.
        ft_optimizer (`str`, *optional*, defaults to `"sgd"`):
            `"sgd"` (the edit stays exactly low-rank), `"adam"` or `"rmsprop"` (dense updates). The LiME reference's
            FT baseline is `ft_optimizer="rmsprop", ft_lr=5e-6, ft_steps=100` (with `ft_early_stop=True`).
        ft_early_stop (`bool`, *optional*, defaults to `True`):
            Stop fine-tuning as soon as every target of the edit is predicted.
        ft_loc_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the KL term on retain inputs for the locality-constrained fine-tuning variant (0 turns it off).

    Parameters of the LiME language masks:

    Args:
        use_lime_mask (`bool`, *optional*, defaults to `True`):
            Attach a language-specific hard-concrete mask to the editor's inputs (LiME). `False` gives the plain
            (cross-lingually trained) editor.
        mask_l0 (`bool`, *optional*, defaults to `True`):
            Use hard-concrete gates with an expected-L0 penalty. `False` uses a plain learned scale per feature.
        mask_temperature (`float`, *optional*, defaults to `2/3`):
            Temperature `beta` of the hard-concrete distribution.
        mask_stretch (`tuple[float, float]`, *optional*, defaults to `(-0.1, 1.1)`):
            Stretch limits `(gamma, zeta)` of the gates before clamping to `[0, 1]`.
        mask_init_drop_rate (`float`, *optional*, defaults to `0.5`):
            Initial probability that a gate is closed; sets the initial `log_alpha`.
        mask_offset (`float`, *optional*, defaults to `1.0`):
            Constant added to the mask: inputs are scaled by `mask_offset + s * z`, so with 1.0 the mask amplifies
            and never removes. The masked input and gradient of each token keep their norms: a mask re-weights
            features, it never resizes an edit.
        mask_scope (`str`, *optional*, defaults to `"language"`):
            `"language"`: one mask row per language (LiME). `"shared"`: one row for all languages, the control that
            tells a language-specific mask apart from "a mask".
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules to edit (names, suffixes or a regex); None picks the model family's FFN linears."},
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Block indices to edit; None means the top `num_top_layers` blocks."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the ModuleList holding the blocks, e.g. 'layer', 'h' or 'layers'."}
    )
    num_top_layers: int = field(default=3, metadata={"help": "Top blocks to edit when layers_to_transform is None."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True when edited layers store weights as (fan_in, fan_out), e.g. Conv1D."}
    )
    languages: list[str] = field(
        default_factory=list, metadata={"help": "Ordered language codes; the order is the mask row and is saved."}
    )
    editor: Literal["mend", "ke", "ft"] = field(
        default="mend", metadata={"help": "Editing algorithm: 'mend', 'ke' (KnowledgeEditor) or 'ft' (fine-tuning)."}
    )
    edit_lr_init: float = field(default=1e-4, metadata={"help": "Initial learned per-layer edit step size."})
    mend_rank: int = field(default=1920, metadata={"help": "Width of MEND's low-rank bottleneck."})
    mend_n_hidden: int = field(default=1, metadata={"help": "The reference's n_hidden: n_hidden + 1 MEND blocks."})
    mend_init: Literal["id", "random"] = field(
        default="id", metadata={"help": "'id': MEND's blocks start as the identity; 'random'."}
    )
    mend_norm: bool = field(default=True, metadata={"help": "Per-token LayerNorm of MEND's inputs (x and delta)."})
    mend_norm_eps: float = field(default=1e-5, metadata={"help": "Epsilon of MEND's LayerNorms."})
    mend_center: bool = field(
        default=False, metadata={"help": "Centre MEND's layer inputs on their running training mean."}
    )
    mend_combine: bool = field(default=True, metadata={"help": "One network over [x, delta] (True) or one each."})
    mend_shared: bool = field(
        default=True, metadata={"help": "Share MEND networks across same-shape layers with per-layer scale/shift."}
    )
    mend_compute_dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata={"help": "MEND's matrix products: 'float32' or 'bfloat16'."}
    )
    ke_hidden_dim: int = field(default=128, metadata={"help": "Width of KnowledgeEditor's conditioning network."})
    ke_rank: int = field(default=1, metadata={"help": "Rank of KnowledgeEditor's additive shift term."})
    ke_conditioner: Literal["pooled", "lstm"] = field(
        default="pooled", metadata={"help": "KnowledgeEditor: 'pooled' (ours) or 'lstm' (the LiME reference's)."}
    )
    ft_steps: int = field(default=10, metadata={"help": "Maximum optimisation steps of the fine-tuning editor."})
    ft_lr: float = field(default=1e-3, metadata={"help": "Step size of the fine-tuning editor."})
    ft_optimizer: Literal["sgd", "adam", "rmsprop"] = field(
        default="sgd", metadata={"help": "'sgd' (exactly low-rank edits), 'adam' or 'rmsprop' (dense edits)."}
    )
    ft_early_stop: bool = field(default=True, metadata={"help": "Stop fine-tuning once the edit holds."})
    ft_loc_coef: float = field(
        default=0.0, metadata={"help": "KL weight on retain inputs for locality-constrained fine-tuning (0 = off)."}
    )
    use_lime_mask: bool = field(default=True, metadata={"help": "Attach LiME's language-specific masks."})
    mask_l0: bool = field(default=True, metadata={"help": "Hard-concrete gates with an expected-L0 penalty."})
    mask_temperature: float = field(default=2.0 / 3.0, metadata={"help": "Hard-concrete temperature beta."})
    mask_stretch: tuple[float, float] = field(
        default=(-0.1, 1.1), metadata={"help": "Stretch limits (gamma, zeta) of the hard-concrete gates."}
    )
    mask_init_drop_rate: float = field(default=0.5, metadata={"help": "Initial probability that a gate is closed."})
    mask_offset: float = field(default=1.0, metadata={"help": "Added to the mask: inputs scale by offset + s*z."})
    mask_scope: Literal["language", "shared"] = field(
        default="language", metadata={"help": "'language': one mask row per language; 'shared': one for all."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.mask_stretch, list):
            self.mask_stretch = tuple(self.mask_stretch)
        self.languages = list(self.languages)
        self._check_values()

    def _check_values(self) -> None:
        _check_choice("editor", self.editor, EDITORS)
        _check_choice("mend_init", self.mend_init, ("id", "random"))
        _check_choice("ft_optimizer", self.ft_optimizer, FT_OPTIMIZERS)
        _check_choice("mask_scope", self.mask_scope, MASK_SCOPES)
        _check_choice("mend_compute_dtype", self.mend_compute_dtype, MEND_COMPUTE_DTYPES)
        _check_choice("ke_conditioner", self.ke_conditioner, KE_CONDITIONERS)
        _check_languages(self.languages, required=self.use_lime_mask and self.editor != "ft")
        for name in ("num_top_layers", "mend_rank", "ke_hidden_dim", "ke_rank", "ft_steps"):
            _check_positive_int(name, getattr(self, name))
            _check_at_most(name, getattr(self, name))
        if isinstance(self.mend_n_hidden, bool) or not isinstance(self.mend_n_hidden, int) or self.mend_n_hidden < 0:
            raise ValueError(f"`mend_n_hidden` must be an int >= 0, got {self.mend_n_hidden!r}.")
        _check_at_most("mend_n_hidden", self.mend_n_hidden)
        _check_target_modules(self.target_modules)
        for name in ("edit_lr_init", "ft_lr", "mask_temperature", "mend_norm_eps"):
            _check_positive_float(name, getattr(self, name))
        if not 0.0 < self.mask_init_drop_rate < 1.0:
            raise ValueError(f"`mask_init_drop_rate` must be in (0, 1), got {self.mask_init_drop_rate!r}.")
        _check_stretch(self.mask_stretch)
        if self.ft_loc_coef < 0:
            raise ValueError(f"`ft_loc_coef` must be >= 0, got {self.ft_loc_coef!r}.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("`layers_pattern` needs `layers_to_transform` to be set as well.")
        if self.editor == "ft" and self.use_lime_mask:
            warnings.warn(
                "The fine-tuning editor has no inputs to mask: `use_lime_mask` is ignored for editor='ft'.",
                stacklevel=2,
            )


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


# Upper bounds that no real editor needs and that keep a hostile `adapter_config.json` from allocating gigabytes or
# looping for minutes before any other check (sizes relative to the base model are checked by `LimeModel`).
SIZE_LIMITS = {"num_top_layers": 1024, "mend_rank": 65_536, "ke_hidden_dim": 65_536, "ke_rank": 1024,
               "ft_steps": 100_000, "mend_n_hidden": 16}  # fmt: skip
MAX_REGEX_LENGTH = 1000


def _check_at_most(name: str, value: int) -> None:
    limit = SIZE_LIMITS[name]
    if value > limit:
        raise ValueError(f"`{name}` must be at most {limit}, got {value!r}.")


def _check_target_modules(target_modules: object) -> None:
    """Lists of names are always fine; a regex string must be short and free of nested quantifiers."""
    if target_modules is None or not isinstance(target_modules, str):
        return
    if len(target_modules) > MAX_REGEX_LENGTH:
        raise ValueError(f"`target_modules` regex is {len(target_modules)} characters; at most {MAX_REGEX_LENGTH}.")
    if _has_risky_repetition(target_modules):
        raise ValueError(
            f"`target_modules` regex {target_modules!r} repeats a group that holds a quantifier or an alternation "
            "(like `(.*)*` or `(a|a)+`), which can take exponential time; pass module names or a simpler regex."
        )
    try:
        re.compile(target_modules)
    except re.error as err:
        raise ValueError(f"`target_modules` {target_modules!r} is not a valid regex: {err}.") from err


def _has_risky_repetition(pattern: str) -> bool:
    """Whether a group that contains a quantifier or `|` (at any depth) is itself repeated by `*`, `+` or `{`."""
    stack: list[bool] = []  # per open group: does it contain a quantifier / alternation?
    risky_closed = False  # the group that just closed was risky
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            risky_closed = False
            continue
        if char in "*+{" and risky_closed:
            return True
        risky_closed = False
        if char == "(":
            stack.append(False)
            if pattern[index + 1 : index + 2] == "?":  # `(?:`, `(?=`...: not a quantifier
                index += 1
        elif char == ")" and stack:
            inner = stack.pop()
            risky_closed = inner
            if stack:
                stack[-1] = stack[-1] or inner
        elif char in "*+?{|" and stack:
            stack[-1] = True
        index += 1
    return False


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_positive_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")


def _check_languages(languages: list[str], required: bool) -> None:
    check_languages(languages, allow_empty=True)
    if required and not languages:
        raise ValueError(
            "`languages` is empty but `use_lime_mask=True` needs one mask row per language: pass e.g. "
            "languages=['en', 'fr', 'de'], or set use_lime_mask=False."
        )


def _check_stretch(stretch: tuple[float, float]) -> tuple[float, float]:
    if len(stretch) != 2:
        raise ValueError(f"`mask_stretch` must be a pair (gamma, zeta), got {stretch!r}.")
    gamma, zeta = float(stretch[0]), float(stretch[1])
    if not (gamma < 0.0 and zeta > 1.0):
        raise ValueError(f"`mask_stretch` needs gamma < 0 < 1 < zeta, got {stretch!r}.")
    return gamma, zeta
