"""`LimeTrainer`: a `Trainer` whose steps are cross-lingual editing episodes (works under `accelerate launch`)."""

from __future__ import annotations

import os
import types
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer
from transformers.utils import logging

from ..head_product import LOW_DTYPES as HEAD_DTYPES
from ..head_product import low_precision
from ..prefix_cache import PrefixCache
from .episode import EDIT_LR_PREFIX, EPISODE_METRICS, GATE_PREFIX, NONFINITE, run_episode
from .malloc import keep_freed_memory
from .training_args import LimeTrainingArguments

logger = logging.get_logger(__name__)

GROUPS = ("editor", "masks", "edit_lrs")
EPISODE_PREFIX_BYTES = 1 << 30  # bound of one episode's stored rows (freed after each episode)


class LimeTrainer(Trainer):
    """
    Trains the editor of a LIME adapter on cross-lingual episodes (DESIGN.md §2, LiME paper §3).

    Each training step runs one batch of episodes: the editor computes an edit from the *edit* batch (in the
    sampled editing language), the post-edit model is scored on the *update* batch (the same items in the sampled
    updating language) and on the *retain* batch (unrelated items), all through the functional path — the base
    weights are never touched. The episode goes through the model's own `forward`, so DDP synchronises the
    editor's gradients across processes, and FSDP (versions 1 and 2, with `state_dict_type` `FULL_STATE_DICT`, and
    `use_orig_params=True` for version 1) gathers the sharded base model and editor for it (docs/training.md).

    Args:
        model (`PeftModel`): A model with a LIME adapter (`get_peft_model(base, LimeConfig(...))`).
        args ([`LimeTrainingArguments`]): Training arguments. When `train_dataset` / `eval_dataset` are parallel
            items (the common schema, e.g. `load_mlama(...)["train"]`) rather than an `EpisodeDataset`, the episodes
            are built from `args` (`preset` or the language lists, `n_edit`, `n_retain`, `episode_seed`).
        task (`str`, *optional*): `"masked_lm"`, `"seq_cls"` or `"causal_lm"`; taken from the collator when it has
            a `task` attribute.
        **kwargs: Everything else [`~transformers.Trainer`] accepts (`train_dataset`, `eval_dataset`,
            `data_collator`, `processing_class`, `callbacks`...).

    Example:

    ```py
    >>> args = LimeTrainingArguments("out", max_steps=100)  # doctest: +SKIP
    >>> trainer = LimeTrainer(model=peft_model, args=args, train_dataset=EpisodeDataset(...),
    ...                       data_collator=EpisodeCollator(tok, "masked_lm"))  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP

    ```
    """

    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args: LimeTrainingArguments | None = None, task: str | None = None, **kwargs):
        if args is None or not isinstance(args, LimeTrainingArguments):
            raise TypeError("LimeTrainer needs `args` to be a LimeTrainingArguments.")
        _check_lime_model(model)
        if kwargs.get("compute_metrics") is not None:
            raise ValueError(
                "LimeTrainer does not take `compute_metrics`: an episode has no predictions/labels pair to hand it. "
                "Validation already reports the episode metrics (eval_edit/acc, eval_loc/acc, eval_hmean, the loss "
                "parts); for edit success and locality per language pair, run hf_lime.evaluation.evaluate_editor "
                "(or the `lime_xl_edit` metric) on the trained editor."
            )
        self.task = task or getattr(kwargs.get("data_collator"), "task", None)
        if self.task is None:
            raise ValueError("Pass `task=` ('masked_lm', 'seq_cls' or 'causal_lm') or a collator with a `task`.")
        _check_languages(model, args, kwargs)
        for name, seed in (("train_dataset", args.episode_seed), ("eval_dataset", args.episode_seed + 1)):
            if _is_item_dataset(kwargs.get(name)):
                kwargs[name] = episodes_from_arguments(kwargs[name], model.base_model.languages, args, seed)
        super().__init__(model=model, args=args, **kwargs)
        if self.is_fsdp_enabled:
            _check_fsdp_plugin(self.accelerator.state.fsdp_plugin)
        if args.keep_freed_memory and self.args.device.type == "cpu":
            keep_freed_memory()
        if args.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.nonfinite_steps = 0
        # under FSDP the editor's parameters are whole only inside the forward: its logged state is read there
        self._editor_state: dict[str, float] = {}
        self._window_starts = True  # the next training episode opens a gradient-accumulation window
        # the episodes' frozen-prefix cache: made at the first episode; False where the model has none
        self._prefix_cache: PrefixCache | bool | None = None
        _install_episode_forward(model, self)

    def _peft_model(self):
        """The `PeftModel` being trained (under FSDP `self.model` is its wrapper)."""
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        output = model(lime_episode=inputs)
        mode = "train" if self.model.training else "eval"
        for name, value in output.metrics.items():
            self._metrics[mode][name].append(value)
        return (output.loss, output) if return_outputs else output.loss

    def _episode(self, peft_model, episode: dict[str, dict]):
        a = self.args
        fsdp_training = self.is_fsdp_enabled and peft_model.training
        if fsdp_training:
            # as DDP does: at the first episode of each gradient-accumulation window (its `no_sync` forwards skip it)
            if self._window_starts:
                _broadcast_editor_buffers(peft_model.base_model.editor)
            self._window_starts = self.accelerator.sync_gradients
        with low_precision(HEAD_DTYPES[a.head_dtype]):
            output = run_episode(peft_model, episode, self.task, a.c_edit, a.c_loc, a.c_l0, self._prefix(peft_model))
        if fsdp_training:
            self._editor_state = editor_state_logs(peft_model.base_model)
        return output

    def _prefix(self, peft_model) -> PrefixCache | None:
        """The episodes' frozen-prefix cache (`LimeTrainingArguments.prefix_cache`), made once; `None` when off, under
        FSDP, or for a model whose blocks the cache cannot find (e.g. a classifier without a block list)."""
        if not self.args.prefix_cache or self.is_fsdp_enabled or self._prefix_cache is False:
            return None
        if self._prefix_cache is None:  # the episode forward is installed on one model: made once for it
            try:
                self._prefix_cache = PrefixCache(peft_model, max_bytes=EPISODE_PREFIX_BYTES)
            except ValueError as error:
                logger.warning("Episodes run without the frozen-prefix cache: %s", error)
                self._prefix_cache = False
                return None
        return self._prefix_cache

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Run the episode in eval mode (deterministic masks); editing needs gradients, so enable them."""
        inputs = self._prepare_inputs(inputs)
        with torch.enable_grad():
            output = model(lime_episode=inputs)
        _end_fsdp1_backward(model)
        for name, value in output.metrics.items():
            self._metrics["eval"][name].append(value)
        return output.loss.detach(), None, None

    # ------------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        averaged = {f"{prefix}{k}": sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        logs.update(averaged)
        if mode == "train":
            logs[NONFINITE] = self.nonfinite_steps
            # under FSDP: the state seen by the last training episode (before its optimizer step)
            fsdp = self.is_fsdp_enabled
            logs.update(self._editor_state if fsdp else editor_state_logs(self._peft_model().base_model))
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        self._metrics["eval"].clear()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[3] if len(args) > 3 else "eval")
        for name in EPISODE_METRICS:
            values = self._metrics["eval"].get(name)
            if values:
                output.metrics[f"{prefix}_{name}"] = sum(values) / len(values)
        self._metrics["eval"].clear()
        return output

    # ------------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """PEFT's adapter files, plus what makes the folder a complete LIME editor: `lime_editor.json` and the
        hf_lime model card (so `LimeEditor.from_pretrained` loads a trainer save or push as it is). Written
        all-or-nothing (`hf_lime.atomic.write_folder`); other files already in the folder are kept. Under FSDP,
        `state_dict` is the gathered (full) state dict, from which the base-model fingerprint is also computed."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            super()._save(output_dir, state_dict)
            return
        from ..atomic import write_folder

        def write(folder) -> None:
            super(LimeTrainer, self)._save(str(folder), state_dict)
            self._describe(str(folder), repo_id=self.hub_model_id, state_dict=state_dict)

        write_folder(output_dir, write)

    def create_model_card(self, *args: Any, license: str | None = None, **kwargs: Any) -> None:
        """hf_lime's model card (editor, languages, training, metrics; `license` as in transformers) instead of
        transformers' generic one. transformers' other card arguments (`tags`, `dataset`...) are not used.

        Under FSDP the base model's weights are sharded here: the description `save_model` wrote (from the gathered
        weights) is kept, and `license` is not added (pass it to `LimeEditor.push_to_hub` instead)."""
        if not self.is_world_process_zero():
            return
        if self.is_fsdp_enabled:
            if license is not None:
                logger.warning("Under FSDP the model card written by `save_model` is kept: `license` is not added.")
            return
        self._describe(self.args.output_dir, repo_id=self.hub_model_id, license=license)

    def _describe(
        self, folder: str, repo_id: str | None, license: str | None = None, state_dict: dict | None = None
    ) -> None:
        from ..editor import LimeEditor

        model = self._peft_model()
        editor = LimeEditor(model, self.processing_class, task=self.task, training_info=self._training_info())
        try:
            editor._set_base_name(None)
        except ValueError:
            logger.warning("The base model has no name or folder: no lime_editor.json or model card written.")
            return
        whole = _whole_edited_weights(model, state_dict) if self.is_fsdp_enabled else nullcontext()
        with whole:
            editor.write_description(folder, repo_id=repo_id, license=license)

    def _training_info(self) -> dict[str, Any]:
        args, state = self.args, self.state
        return {
            "trainer": "LimeTrainer",
            "global_step": state.global_step,
            "best_metric": state.best_metric,
            "learning_rate": args.learning_rate,
            "c_edit": args.c_edit,
            "c_loc": args.c_loc,
            "c_l0": args.c_l0,
            "head_dtype": args.head_dtype,
            "languages": list(self._peft_model().base_model.languages),
            **self.episode_settings(),
        }

    def episode_settings(self) -> dict[str, int]:
        """
        The batch sizes the editor is trained at, as saved in `training_info`: `n_edit` (edits per episode),
        `n_retain`, `n_update` and `edit_batch_size`, the rows of one training edit (`n_edit` times the episodes per
        device batch, which `EpisodeCollator` concatenates into one editor call, as `LimeEditor.edit_many`'s batch
        mode makes one call over its requests). Read from the training `EpisodeDataset` when there is one, else from
        the arguments.
        """
        return episode_settings(self.train_dataset, self.args)

    # ------------------------------------------------------------------------------------------- loading
    def _load_best_model(self) -> None:
        if _is_fsdp1(self.model):
            self._load_editor_into_fsdp1(self.state.best_model_checkpoint)
            return
        super()._load_best_model()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if _is_fsdp1(model if model is not None else self.model):
            self._load_editor_into_fsdp1(resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_editor_into_fsdp1(self, folder: str) -> None:
        """
        Load the editor a checkpoint holds (`adapter_model.safetensors`, written by `_save` from the gathered
        weights) into the FSDP1-wrapped model, on every process.

        Accelerate's loader for FSDP1 (`load_fsdp_model`) loads under `rank0_only=True`, where PEFT's
        `set_peft_model_state_dict` sees an empty state dict on the other processes: the parts of the editor sharded
        to them were silently left as they were (the MEND LayerNorms' biases, measured on 2 processes). Here every
        process loads the whole editor under a full state dict without `rank0_only`; only the editor's entries are
        loaded (the frozen base is not in the checkpoint), each unit gathered in turn.
        """
        from safetensors.torch import load_file
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        from ..tuner.model import CONTAINERS

        path = os.path.join(folder, "adapter_model.safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"{folder} holds no adapter_model.safetensors: it is not a LimeTrainer checkpoint.")
        adapter = self._peft_model().active_adapter
        state = {_with_adapter_name(key, adapter, CONTAINERS): value for key, value in load_file(path).items()}
        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            result = self.model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            unexpected = sorted(result.unexpected_keys)[:5]
            raise ValueError(
                f"The checkpoint {folder} holds entries this editor does not have: {unexpected} (was it saved from "
                "another LimeConfig?)."
            )
        logger.info(f"Editor loaded from {folder} into the FSDP model on every process.")

    # ------------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        """Three parameter groups: editor networks (`learning_rate`), masks and edit step sizes."""
        if self.optimizer is None:
            groups = _parameter_groups(self.model, self.args)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            _guard_nonfinite(self.optimizer, self)
        return self.optimizer


def _is_item_dataset(dataset: Any) -> bool:
    """Parallel items in the common schema (a `datasets.Dataset` or a list of dicts), not already episodes."""
    if dataset is None or hasattr(dataset, "usable_item_ids"):  # an EpisodeDataset
        return False
    features = getattr(dataset, "column_names", None)
    if features is None and isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0], dict):
        features = list(dataset[0])
    return bool(features) and {"prompts", "targets", "languages"} <= set(features)


def episode_settings(dataset: Any, args: LimeTrainingArguments) -> dict[str, int]:
    """`n_edit`, `n_retain`, `n_update` of `dataset` (an `EpisodeDataset`; `args`' when it is not one) and
    `edit_batch_size`: the edit rows of one training step's editor call (`n_edit × per_device_train_batch_size`)."""
    n_edit = int(getattr(dataset, "n_edit", args.n_edit))
    return {
        "n_edit": n_edit,
        "n_retain": int(getattr(dataset, "n_retain", args.n_retain)),
        "n_update": int(getattr(dataset, "n_update", 1)),
        "edit_batch_size": n_edit * int(args.per_device_train_batch_size),
    }


def episodes_from_arguments(items: Any, languages: list[str], args: LimeTrainingArguments, seed: int):
    """The `EpisodeDataset` that `args` describes (`preset` or the three language lists, `n_edit`, `n_retain`)
    over parallel `items`: one episode per usable item."""
    from ..data.episodes import EpisodeDataset, episode_languages

    roles = episode_languages(args.preset, languages) if args.preset else {}
    for name in ("edit_languages", "update_languages", "retain_languages"):
        if getattr(args, name):
            roles[name] = list(getattr(args, name))
    return EpisodeDataset(items, languages, n_edit=args.n_edit, n_retain=args.n_retain, seed=seed, **roles)


def editor_state_logs(tuner) -> dict[str, float]:
    """The learned step size of every edited layer and the mean gate of every mask row, as loggable floats."""
    logs = {f"{EDIT_LR_PREFIX}{i}": float(lr) for i, lr in enumerate(tuner.edit_lrs.lrs.tolist())}
    gates = tuner.masks.mean_gates().tolist()
    names = ["shared"] if tuner.masks.scope == "shared" else tuner.languages
    logs.update({f"{GATE_PREFIX}{name}": float(gate) for name, gate in zip(names, gates, strict=False)})
    return logs


def _parameter_groups(model, args: LimeTrainingArguments) -> list[dict]:
    params: dict[str, list[torch.nn.Parameter]] = {g: [] for g in GROUPS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lime_masks." in name:
            params["masks"].append(param)
        elif ".lime_edit_lrs." in name:
            params["edit_lrs"].append(param)
        else:
            params["editor"].append(param)
    rates = {"editor": args.learning_rate, "masks": args.mask_learning_rate, "edit_lrs": args.edit_lr_learning_rate}
    decay = {"editor": args.weight_decay, "masks": 0.0, "edit_lrs": 0.0}
    return [{"params": params[g], "lr": rates[g], "weight_decay": decay[g], "name": g} for g in GROUPS if params[g]]


def _guard_nonfinite(optimizer: torch.optim.Optimizer, trainer: LimeTrainer) -> None:
    """Skip (and count) optimizer steps whose gradients are not finite, instead of corrupting the editor."""
    step = optimizer.step

    def guarded_step(*args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().float().norm() for g in grads])).all():
            trainer.nonfinite_steps += 1
            logger.warning(f"Non-finite meta-gradient: optimizer step skipped ({trainer.nonfinite_steps} so far).")
            optimizer.zero_grad(set_to_none=True)
            return None
        return step(*args, **kwargs)

    optimizer.step = guarded_step


def _install_episode_forward(peft_model, trainer: LimeTrainer) -> None:
    """Let `peft_model(lime_episode=...)` run an episode, so DDP's forward wraps the whole episode."""
    if getattr(peft_model, "_lime_episode_forward", False):
        peft_model._lime_trainer = trainer
        return
    original = peft_model.forward

    def forward(self, *args, lime_episode=None, **kwargs):
        if lime_episode is None:
            return original(*args, **kwargs)
        return self._lime_trainer._episode(self, lime_episode)

    peft_model._lime_trainer = trainer
    peft_model.forward = types.MethodType(forward, peft_model)
    peft_model._lime_episode_forward = True


def _broadcast_editor_buffers(editor: torch.nn.Module) -> None:
    """Give every process process 0's editor buffers (MEND's running input means with `mend_center`), as DDP does
    (`broadcast_buffers`, at the first forward of each gradient-accumulation window) and FSDP does not: the
    processes centre their edits as under DDP, and an FSDP run trains the editor a DDP run does."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for buffer in editor.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _is_fsdp1(model) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def _with_adapter_name(key: str, adapter: str, containers: tuple[str, ...]) -> str:
    """A saved editor entry (`base_model.lime_masks.masks...`) under the model's name (`...lime_masks.default...`)."""
    for container in containers:
        marker = f".{container}."
        if marker in key:
            return key.replace(marker, f".{container}.{adapter}.", 1)
    return key


def _end_fsdp1_backward(model) -> None:
    """
    FSDP version 1 after an evaluation episode: the edit's capture differentiated the edit loss inside the forward,
    so the FSDP units it went back through gathered their parameters and were marked as in a backward. A training
    step's real backward ends with FSDP's own clean-up (reshard, every unit back to idle); an evaluation episode has
    no backward, so that same clean-up is run here. Without it the next `state_dict()` (a checkpoint right after a
    validation) fails with "Expects the handle training to be IDLE but got HandleTrainingState.BACKWARD_PRE".
    FSDP2 needs nothing: it ends the capture's backward itself.
    """
    if _is_fsdp1(model):
        from torch.distributed.fsdp._runtime_utils import _post_backward_final_callback

        _post_backward_final_callback(model, model)


def _check_fsdp_plugin(plugin) -> None:
    """What `LimeTrainer` needs of an FSDP configuration (errors a user can fix in the accelerate config)."""
    if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        raise ValueError(
            f"LimeTrainer under FSDP saves editors from the gathered state dict: set `fsdp_state_dict_type: "
            f"FULL_STATE_DICT` in the accelerate config (got {plugin.state_dict_type})."
        )
    if getattr(plugin, "fsdp_version", 1) == 1 and not plugin.use_orig_params:
        raise ValueError(
            "LimeTrainer under FSDP version 1 needs `fsdp_use_orig_params: true` in the accelerate config: the frozen "
            "base model and the trainable editor share FSDP units, and the optimizer has one parameter group each "
            "for the editor networks, the masks and the edit step sizes."
        )


@contextmanager
def _whole_edited_weights(peft_model, state_dict: dict | None):
    """Under FSDP, the edited layers' base weights (sharded outside the forward) replaced, inside the block, by
    their gathered values from the full `state_dict`, so that the base-model fingerprint written beside a saved
    editor is that of the whole weights; the sharded parameters are put back on exit."""
    from ..tuner.layer import LimeLayer
    from ..tuner.model import unwrapped_name

    swapped = []
    try:
        for name, module in peft_model.named_modules():
            if not isinstance(module, LimeLayer):
                continue
            key = f"{unwrapped_name(name)}.base_layer.weight"
            if not state_dict or key not in state_dict:
                raise ValueError(
                    f"The gathered state dict has no `{key}`: LimeTrainer under FSDP saves from a full state dict "
                    "(`fsdp_state_dict_type: FULL_STATE_DICT`)."
                )
            base = module.get_base_layer()
            swapped.append((base, base._parameters["weight"]))
            base._parameters["weight"] = torch.nn.Parameter(state_dict[key], requires_grad=False)
        yield
    finally:
        for base, original in swapped:
            base._parameters["weight"] = original


def _check_lime_model(model) -> None:
    tuner = getattr(model, "base_model", None)
    if tuner is None or not hasattr(tuner, "compute_edit"):
        raise TypeError(
            f"LimeTrainer trains a PeftModel with a LIME adapter, got {type(model).__name__}; create it with "
            "`get_peft_model(base_model, LimeConfig(...))`."
        )
    if not tuner.editor.requires_training:
        raise ValueError(f"The {tuner.lime_config.editor!r} editor has nothing to train; evaluate it directly.")


def _check_languages(model, args: LimeTrainingArguments, kwargs: dict) -> None:
    adapter_languages = model.base_model.languages
    if args.languages is not None and list(args.languages) != adapter_languages:
        raise ValueError(
            f"`args.languages` {args.languages} differ from the adapter's languages {adapter_languages}: the order "
            "is the mask row order and must be the same."
        )
    for name in ("train_dataset", "eval_dataset"):
        data_languages = getattr(kwargs.get(name), "languages", None)
        if data_languages is not None and list(data_languages) != adapter_languages:
            raise ValueError(
                f"`{name}.languages` {list(data_languages)} differ from the adapter's languages {adapter_languages}."
            )
