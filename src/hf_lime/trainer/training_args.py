"""`LimeTrainingArguments`: `TrainingArguments` plus the settings of cross-lingual editor training."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..data.episodes import PRESETS
from ..head_product import LOW_DTYPES as HEAD_DTYPES

# Named training recipes: `LimeTrainingArguments.from_recipe(name, output_dir=..., **overrides)`, or
# `parser.set_defaults(**LIME_RECIPES[name])` before an `HfArgumentParser` parses a command line.
# The LiME reference code's MEND recipe for mBERT (franklear/LiME config/config.yaml + config/alg/mend.yaml):
# Adam at a constant rate, 10 episodes per optimizer step, gradient clipping at 100, c_edit 0.1, c_loc 1,
# c_l0 1, mask rate 1e-3, validation with early stopping on the harmonic mean (patience 20,000 steps there; here
# 20 validations, one every 100 optimizer steps, keeping the best checkpoint and the last).
# The step sizes are learned in log space here; their rate is a relative one (see `edit_lr_learning_rate`).
_REFERENCE_RECIPE = {
    "c_edit": 0.1,
    "c_loc": 1.0,
    "c_l0": 1.0,
    "learning_rate": 1e-6,
    "mask_learning_rate": 1e-3,
    "edit_lr_learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "max_grad_norm": 100.0,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 10,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "early_stopping_patience": 20,
}
LIME_RECIPES: dict[str, dict] = {
    "reference": _REFERENCE_RECIPE,
    # The reference's recipe with one episode per optimizer step (benchmarks/reproduce.py), Adam at 1e-5, c_edit 1
    # and early stopping after 4 validations without improvement. On the demo's task `reference` did at least as
    # well on the same number of episodes (docs/results.md), so the demo uses that.
    "cpu": {
        **_REFERENCE_RECIPE,
        "c_edit": 1.0,
        "learning_rate": 1e-5,
        "gradient_accumulation_steps": 1,
        "early_stopping_patience": 4,
    },
}


@dataclass
class LimeTrainingArguments(TrainingArguments):
    r"""
    Arguments of [`LimeTrainer`]: every [`~transformers.TrainingArguments`] field plus the ones below.

    > Parameters of the training loss (one episode: edit → post-edit NLL on the update batch, KL on the retain batch,
    > L0 penalty of the language masks)

    Args:
        c_edit (`float`, *optional*, defaults to `0.1`):
            Weight of the post-edit negative log-likelihood of the new target on the update batch.
        c_loc (`float`, *optional*, defaults to `1.0`):
            Weight of `KL(f_base(x_retain) ‖ f_edited(x_retain))`, averaged over the retain batch's non-padding
            positions (rows for classifiers).
        c_l0 (`float`, *optional*, defaults to `1.0`):
            Weight of the expected L0 norm of the editing languages' mask gates.

    > Parameters of the optimizer (`learning_rate` applies to the editor networks)

    Args:
        mask_learning_rate (`float`, *optional*, defaults to `1e-3`):
            Learning rate of the LiME mask parameters (gates and scales).
        edit_lr_learning_rate (`float`, *optional*, defaults to `1e-2`):
            Learning rate of the learned per-layer edit step sizes. They are learned in log space (always positive),
            so this is roughly the relative change of a step size per optimizer step.

    > Parameters of the episodes (which languages edit, update and retain), used when `LimeTrainer` is given
    > parallel items rather than an `EpisodeDataset`

    Args:
        languages (`list[str]`, *optional*, defaults to `None`):
            The ordered language list; must equal the adapter's `LimeConfig.languages` (the mask rows).
        edit_languages (`list[str]`, *optional*, defaults to `None`):
            Languages an edit is shown in; `None` means all of `languages`.
        update_languages (`list[str]`, *optional*, defaults to `None`):
            Languages the post-edit loss is measured in; `None` means all of `languages`.
        retain_languages (`list[str]`, *optional*, defaults to `None`):
            Languages of the unrelated retain items; `None` means all of `languages`.
        preset (`str`, *optional*, defaults to `None`):
            Shortcut for the three lists: `"monolingual"` (en → en), `"pairwise"` (two languages) or `"all"`
            (all → all). Explicit lists win over the preset.
        n_edit (`int`, *optional*, defaults to `1`):
            Edits per episode (rows of the edit batch): the editor computes one edit from all of them in one call, as
            `LimeEditor.edit_many(mode="batch")` does, so an editor meant to make `k` edits at once is trained with
            `n_edit=k`. Saved in the editor's `training_info` (`n_edit`, and `edit_batch_size`: `n_edit` times
            `per_device_train_batch_size`, the rows of one training edit).
        n_retain (`int`, *optional*, defaults to `4`):
            Unrelated items per episode (rows of the retain batch).
        episode_seed (`int`, *optional*, defaults to `0`):
            Seed of the episode sampler (episodes are a pure function of this seed and their index).

    > Parameters of model selection

    Args:
        early_stopping_patience (`int`, *optional*, defaults to `None`):
            Stop when `metric_for_best_model` (the validation episodes' `hmean`) has not improved for this many
            evaluations; needs `eval_strategy` and `load_best_model_at_end=True`, so the best editor is the one kept
            and saved. `None` trains for `max_steps`.
        early_stopping_threshold (`float`, *optional*, defaults to `0.0`):
            The smallest improvement that counts.

    > Parameters of CPU training

    Args:
        keep_freed_memory (`bool`, *optional*, defaults to `True`):
            When training on a CPU under Linux/glibc, ask the allocator to keep freed memory for reuse instead of
            returning it to the OS (`hf_lime.trainer.malloc.keep_freed_memory`): an episode frees and re-allocates
            the same large buffers every step, and touching fresh pages again cost ~10 % of an episode
            (docs/benchmarks.md). The process's resident memory then stays at its peak. A process-wide setting,
            made once when the trainer is built; no effect on a GPU.
        head_dtype (`str`, *optional*, defaults to `"float32"`):
            `"bfloat16"`: an episode's vocabulary products (the logits at the target positions of its capture, its
            edited forwards and their backwards) run against a bfloat16 copy of the frozen output embeddings, with
            float32 sums and float32 logits (`hf_lime.head_product.low_precision`). 2–3× faster products on CPUs with
            bfloat16 instructions (AVX512-BF16, AMX; slower without them), at bfloat16 rounding of the training
            losses. Edits made after training and every evaluation stay in float32.
        prefix_cache (`bool`, *optional*, defaults to `True`):
            Run the blocks below the first edited one once per episode: the edit, update and retain rows (padded to
            one width) go through them in one forward, and the edit's capture and the edited forward start from
            those hidden states (`hf_lime.prefix_cache`; the frozen base runs in evaluation mode, so they are what a
            full forward computes). Off under FSDP, whose sharded blocks run only inside the wrapped forward.

    Named recipes (`LIME_RECIPES`, `from_recipe`): `"reference"`, the LiME reference code's MEND recipe (the demo's,
    on 600 episodes), and `"cpu"`, one episode per optimizer step.

    Defaults that differ from [`~transformers.TrainingArguments`]: `remove_unused_columns=False` (episodes are
    nested dicts), `learning_rate=1e-4`, `metric_for_best_model="hmean"` with `greater_is_better=True`,
    `logging_steps=10`, `per_device_eval_batch_size=1`.

    A batch of `B` episodes is edited as one `B · n_edit`-row edit (the rows' updates add up), so validation episodes
    are batched one by one by default: with `per_device_train_batch_size=1` validation then measures what training
    does.
    """

    c_edit: float = field(default=0.1, metadata={"help": "Weight of the post-edit NLL on the update batch."})
    c_loc: float = field(default=1.0, metadata={"help": "Weight of the KL on the retain batch."})
    c_l0: float = field(default=1.0, metadata={"help": "Weight of the expected L0 penalty of the mask gates."})
    mask_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the LiME masks."})
    edit_lr_learning_rate: float = field(
        default=1e-2, metadata={"help": "Learning rate of the (log) edit step sizes: ~relative change per step."}
    )
    languages: list[str] | None = field(default=None, metadata={"help": "Ordered languages (the mask rows)."})
    edit_languages: list[str] | None = field(default=None, metadata={"help": "Languages edits are shown in."})
    update_languages: list[str] | None = field(default=None, metadata={"help": "Languages of the post-edit loss."})
    retain_languages: list[str] | None = field(default=None, metadata={"help": "Languages of the retain items."})
    preset: str | None = field(default=None, metadata={"help": "'monolingual', 'pairwise' or 'all'."})
    n_edit: int = field(default=1, metadata={"help": "Edits per episode."})
    n_retain: int = field(default=4, metadata={"help": "Unrelated retain items per episode."})
    episode_seed: int = field(default=0, metadata={"help": "Seed of the episode sampler."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Evaluations without improvement of the validation hmean before stopping."}
    )
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "Smallest improvement that counts."})
    keep_freed_memory: bool = field(
        default=True, metadata={"help": "CPU + glibc: keep freed memory for reuse (faster; RSS stays at peak)."}
    )
    head_dtype: str = field(
        default="float32", metadata={"help": "'float32' or 'bfloat16': the vocabulary products of training episodes."}
    )
    prefix_cache: bool = field(
        default=True, metadata={"help": "Run an episode's rows through the unedited lower blocks once."}
    )
    # changed defaults
    remove_unused_columns: bool = field(default=False, metadata={"help": "Episodes are nested dicts: keep False."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the editor networks."})
    metric_for_best_model: str | None = field(default="hmean", metadata={"help": "Model selection metric."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher hmean is better."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X steps."})
    per_device_eval_batch_size: int = field(
        default=1, metadata={"help": "Validation episodes per batch (a batch of episodes is one multi-row edit)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_dtype not in HEAD_DTYPES:
            raise ValueError(f"`head_dtype` must be one of {sorted(HEAD_DTYPES)}, got {self.head_dtype!r}.")
        for name in ("c_edit", "c_loc", "c_l0", "mask_learning_rate", "edit_lr_learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {list(PRESETS)}, got {self.preset!r}.")
        for name in ("n_edit", "n_retain"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "n_edit" else 0):
                raise ValueError(f"`{name}` must be an int >= {1 if name == 'n_edit' else 0}, got {value!r}.")
        if self.remove_unused_columns:
            raise ValueError("`remove_unused_columns=True` would drop the episode parts; LimeTrainer needs False.")
        self._check_early_stopping()

    def _check_early_stopping(self) -> None:
        if self.early_stopping_patience is None:
            return
        if isinstance(self.early_stopping_patience, bool) or not isinstance(self.early_stopping_patience, int):
            raise ValueError(f"`early_stopping_patience` must be an int >= 1, got {self.early_stopping_patience!r}.")
        if self.early_stopping_patience < 1:
            raise ValueError(f"`early_stopping_patience` must be an int >= 1, got {self.early_stopping_patience!r}.")
        if self.eval_strategy == "no" or not self.load_best_model_at_end:
            raise ValueError(
                "`early_stopping_patience` needs periodic validation and the best editor kept: set "
                "`eval_strategy='steps'` (with `eval_steps`), a matching `save_strategy` and "
                "`load_best_model_at_end=True`."
            )

    @classmethod
    def from_recipe(cls, name: str, **kwargs) -> LimeTrainingArguments:
        """
        Arguments of a named recipe (`LIME_RECIPES`), with `kwargs` (at least `output_dir`) taking precedence.

        Example:

        ```py
        >>> args = LimeTrainingArguments.from_recipe("reference", output_dir="out", eval_steps=500, save_steps=500)
        >>> args.gradient_accumulation_steps, args.max_grad_norm, args.c_edit
        (10, 100.0, 0.1)

        ```
        """
        if name not in LIME_RECIPES:
            raise ValueError(f"Unknown recipe {name!r}; available recipes: {sorted(LIME_RECIPES)}.")
        return cls(**{**LIME_RECIPES[name], **kwargs})
