"""`LimeTrainingArguments`: `TrainingArguments` plus the settings of cross-lingual editor training."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

PRESETS = ("monolingual", "pairwise", "all")


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

    > Parameters of the episodes (which languages edit, update and retain)

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
            Edits per episode (rows of the edit batch).
        n_retain (`int`, *optional*, defaults to `4`):
            Unrelated items per episode (rows of the retain batch).
        episode_seed (`int`, *optional*, defaults to `0`):
            Seed of the episode sampler (episodes are a pure function of this seed and their index).

    Defaults that differ from [`~transformers.TrainingArguments`]: `remove_unused_columns=False` (episodes are
    nested dicts), `learning_rate=1e-4`, `metric_for_best_model="hmean"` with `greater_is_better=True`,
    `logging_steps=10`.
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
    # changed defaults
    remove_unused_columns: bool = field(default=False, metadata={"help": "Episodes are nested dicts: keep False."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the editor networks."})
    metric_for_best_model: str | None = field(default="hmean", metadata={"help": "Model selection metric."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher hmean is better."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X steps."})

    def __post_init__(self) -> None:
        super().__post_init__()
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
