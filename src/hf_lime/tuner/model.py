"""`LimeModel`: the PEFT tuner of the "LIME" method. It owns the editor, the language masks and the step sizes."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..data.encoding import concat_batches
from ..deltas import LayerDelta
from ..editors import BaseEditor, EditorOutput, EditStepSizes, LayerSpec, build_editor
from ..head import logits_surely_finite, target_logits, target_positions
from ..masks import MaskBank
from .config import TARGET_MODULES_MAPPING, LimeConfig
from .context import EditContext, apply_functional_deltas, known_task
from .edit import Edit
from .edit_group import EDIT_MODES, EditGroup
from .layer import LimeLayer
from .merge import COMBINES, preserve_merge, protect_merge, solve_merge
from .refit import FAILED_BOOST, REFIT_ROUNDS, SEQUENCE_REFIT_ROUNDS, refit_layers, row_groups
from .validation import check_batch_fits_model, resolve_language_ids, validate_edit_batch

CONTAINERS = ("lime_editor", "lime_masks", "lime_edit_lrs")


class LimeModel(BaseTuner):
    """
    Cross-lingual model editing as a PEFT method. Create it with `get_peft_model(model, LimeConfig(...))`.

    Example:

    ```py
    >>> from transformers import BertConfig, BertForMaskedLM
    >>> from peft import get_peft_model
    >>> from hf_lime import LimeConfig
    >>> base = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
    ...                                   num_attention_heads=2, intermediate_size=32))
    >>> model = get_peft_model(base, LimeConfig(languages=["en", "fr"]))
    >>> sorted(model.base_model.lime_layers)[:1]
    ['bert-encoder-layer-0-intermediate-dense']

    ```
    """

    prefix: str = "lime_"
    tuner_layer_cls = LimeLayer
    target_module_mapping = TARGET_MODULES_MAPPING
    uses_shared_state: bool = True

    def __init__(self, model: nn.Module, config: Any, adapter_name: str, **kwargs: Any) -> None:
        super().__init__(model, config, adapter_name, **kwargs)
        self.model.eval()
        # PEFT loads adapter weights with `load_state_dict(strict=False)`; check what arrives for our containers
        self._register_load_state_dict_pre_hook(_check_loaded_editor_state, with_module=True)

    # ------------------------------------------------------------------------------------------- injection
    def _check_new_adapter_config(self, config: LimeConfig) -> None:
        super()._check_new_adapter_config(config)
        if len(self.peft_config) > 1:
            raise ValueError("hf_lime supports one LIME adapter per model; create another PEFT model for another.")

    def _prepare_adapter_config(self, peft_config: LimeConfig, model_config: dict) -> LimeConfig:
        _check_sizes_against_model(peft_config, model_config)
        num_layers = _num_blocks(model_config)
        if peft_config.layers_to_transform is None and num_layers is not None:
            top = min(peft_config.num_top_layers, num_layers)
            peft_config.layers_to_transform = list(range(num_layers - top, num_layers))
        if peft_config.target_modules is None:
            suffixes = self.target_module_mapping.get(model_config.get("model_type"))
            if suffixes is None:
                raise ValueError(
                    f"No default target modules for model type {model_config.get('model_type')!r}; pass "
                    f"`target_modules`. Known model types: {sorted(self.target_module_mapping)}."
                )
            peft_config.target_modules = _block_regex(suffixes, peft_config.layers_to_transform)
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, LimeLayer):
            raise ValueError(f"`{current_key}` already carries a LIME layer.")
        if not isinstance(target, (nn.Linear, Conv1D)):
            raise TypeError(
                f"Target module `{current_key}` is a {type(target).__name__}; LIME edits `torch.nn.Linear` and "
                "`transformers.pytorch_utils.Conv1D` layers only. Adjust `target_modules`."
            )
        if isinstance(target, Conv1D) and not peft_config.fan_in_fan_out:
            warnings.warn("Target modules are `Conv1D` layers: setting `fan_in_fan_out=True`.", stacklevel=2)
            peft_config.fan_in_fan_out = True
        new_module = LimeLayer(target, adapter_name, fan_in_fan_out=peft_config.fan_in_fan_out)
        self._replace_module(parent, target_name, new_module, target)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, **kwargs)
        self._build_editor_state(adapter_name)

    def _build_editor_state(self, adapter_name: str) -> None:
        config = self.peft_config[adapter_name]
        specs = self.layer_specs
        editor = build_editor(specs, config, self.model)
        widths = {s.key: s.d_in + s.d_out for s in specs} if (config.use_lime_mask and editor.uses_masks) else {}
        masks = MaskBank(
            widths,
            num_languages=len(config.languages),
            scope=config.mask_scope,
            use_l0=config.mask_l0,
            offset=config.mask_offset,
            temperature=config.mask_temperature,
            stretch=tuple(config.mask_stretch),
            init_drop_rate=config.mask_init_drop_rate,
        )
        for name, module in zip(
            CONTAINERS, (editor, masks, EditStepSizes([s.key for s in specs], config.edit_lr_init)), strict=True
        ):
            if not hasattr(self, name):
                setattr(self, name, nn.ModuleDict())
            getattr(self, name)[adapter_name] = module
            module.requires_grad_(not config.inference_mode)
        device = next((p.device for p in self.model.parameters()), None)
        if device is not None:
            for name in CONTAINERS:
                getattr(self, name)[adapter_name].to(device)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        """Freeze the base model; the editor containers keep their own `requires_grad`."""
        for param in model.parameters():
            param.requires_grad = False

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        for container in CONTAINERS:
            marker = f"{container}.{adapter_name}."
            if marker in key:
                return key.replace(marker, f"{container}.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def train(self, mode: bool = True) -> LimeModel:
        """Train the editor modules; the frozen base model always stays in eval mode (no dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    # ------------------------------------------------------------------------------------------- accessors
    @property
    def _adapter(self) -> str:
        if not self.active_adapters or self.active_adapters[0] not in self.peft_config:
            raise ValueError(
                "This model has no active LIME adapter (was it deleted with `delete_adapter`?): create one with "
                "`get_peft_model(base, LimeConfig(...))` or load one with `LimeEditor.from_pretrained`."
            )
        return self.active_adapters[0]

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: a LIME adapter is an editor, not a weight delta to blend. Stack `Edit`s instead, or export
        them as LoRA adapters (`Edit.to_lora`) and combine those with PEFT."""
        raise ValueError(
            "LIME adapters cannot be combined with `add_weighted_adapter`: they hold editors, not weight deltas. "
            "Stack edits (apply several `Edit`s), or export them with `Edit.to_lora` and combine the LoRA adapters."
        )

    @property
    def lime_config(self) -> LimeConfig:
        return self.peft_config[self._adapter]

    @property
    def lime_layers(self) -> dict[str, LimeLayer]:
        """Edited layers by key (module name with "." replaced by "-")."""
        return {_key(name): m for name, m in self.model.named_modules() if isinstance(m, LimeLayer)}

    @property
    def layer_specs(self) -> list[LayerSpec]:
        return [
            LayerSpec(key=_key(name), name=unwrapped_name(name), d_in=m.in_features, d_out=m.out_features)
            for name, m in self.model.named_modules()
            if isinstance(m, LimeLayer)
        ]

    @property
    def editor(self) -> BaseEditor:
        return self.lime_editor[self._adapter]

    @property
    def masks(self) -> MaskBank:
        return self.lime_masks[self._adapter]

    @property
    def edit_lrs(self) -> EditStepSizes:
        return self.lime_edit_lrs[self._adapter]

    @property
    def languages(self) -> list[str]:
        return list(self.lime_config.languages)

    def l0_penalty(self, lang_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Expected L0 norm of the language masks' gates (differentiable; 0 when LiME is off)."""
        return self.masks.l0_penalty(lang_ids)

    # ------------------------------------------------------------------------------------------- editing
    def compute_edit(
        self,
        inputs: Any,
        language: str | Sequence[str] | torch.Tensor | None = None,
        retain_inputs: Any = None,
        *,
        passenger_inputs: Any = None,
        task: str | None = None,
    ) -> EditorOutput:
        """
        Compute an edit without applying it. Differentiable in the editor's parameters when grad is enabled
        (the trainer's functional path); combine with [`~LimeModel.apply_deltas`] to get post-edit outputs.
        Arguments as in [`~LimeModel.edit`]; `language` may also be the rows' language ids (a 1-D integer tensor of
        positions in `languages`), as episodes carry them. `passenger_inputs` (with `task`) are rows forwarded in
        the edit's own forward, outside its loss: their unedited target logits come back as
        `output.info.passenger_logits` (a training episode's retain rows, without a forward of their own).
        """
        batch, languages, lang_ids = self.check_edit_inputs(inputs, language)
        device = batch["input_ids"].device
        ctx = EditContext(
            self.model,
            self.lime_layers,
            batch,
            None if lang_ids is None else lang_ids.to(device),
            self.masks,
            self.edit_lrs,
            retain_batch=retain_inputs,
            task=task,
            passenger_batch=passenger_inputs,
        )
        output = self.editor.compute_deltas(ctx)
        output.info.languages = languages
        output.info.passenger_logits = ctx.passenger_logits
        return output

    def check_edit_inputs(
        self, inputs: Any, language: str | Sequence[str] | torch.Tensor | None = None
    ) -> tuple[dict[str, Any], list[str], torch.Tensor | None]:
        """
        Check an edit batch and its languages against this model without computing anything: what `edit` and
        `compute_edit` check first.

        Returns:
            The batch as a plain dict, each row's language code, and their mask rows (`None` without languages).

        Raises:
            TypeError, ValueError: a malformed batch, a prompt longer than the model reads, a label outside its
                outputs, an unknown language, or a call inside `torch.inference_mode()`.
        """
        batch = validate_edit_batch(inputs)
        check_batch_fits_model(batch, getattr(self.model, "config", None), _num_outputs(self.model))
        languages, lang_ids = resolve_language_ids(language, self.languages, batch["input_ids"].shape[0])
        return batch, languages, lang_ids

    def edit(
        self,
        inputs: Any,
        language: str | Sequence[str] | None = None,
        retain_inputs: Any = None,
        *,
        combine: str = "sum",
        preserve: dict[str, torch.Tensor] | None = None,
        preserve_weight: float | None = None,
    ) -> Edit:
        """
        Compute an edit and apply it.

        Args:
            inputs (`Mapping[str, torch.Tensor]`): The tokenized edit prompt(s) with `labels` marking the new target
                (`-100` except the target positions for masked/causal LMs; a class id per row for classifiers).
            language (`str` or `list[str]`, *optional*): The editing language, or one per row. Required when the
                adapter has `languages`.
            retain_inputs (`Mapping[str, torch.Tensor]`, *optional*): Unrelated inputs whose outputs the edit
                should keep. Used by the locality-constrained fine-tuning editor (`editor="ft"`,
                `ft_loc_coef > 0`); the other editors ignore it.
            combine (`str`, *optional*, defaults to `"sum"`): How MEND joins the rows of a batch: `"sum"` (MEND's
                batched edit: every row's normalised factors in one update, as for several facts at once) or
                `"mean"` (that update divided by the number of rows: one step shared by rows that state one fact,
                e.g. the same fact in several languages), or `"solve"` (MEND's input factors kept, its output factors
                re-solved so that every row's tokens see what that row's edit alone would give them, with a ridge:
                rows about different facts stop interfering; `hf_lime.tuner.merge`). `"mean"` and `"solve"` are for
                MEND only: KnowledgeEditor already averages its rows' shifts and fine-tuning fits all rows at once.
            preserve (`dict[str, torch.Tensor]`, *optional*): With `combine="solve"`: key moments of what the edit
                should leave alone ([`~hf_lime.tuner.preserve.key_moments`]); the edit is then the least-squares
                update that gives its tokens their MEND change and those keys as little change as it can
                ([`~hf_lime.tuner.merge.preserve_merge`]).
            preserve_weight (`float`, *optional*): The preserved keys' weight per edit token
                (`DEFAULT_PRESERVE_WEIGHT`).

        Returns:
            [`Edit`]: the applied edit; `edit.revert()` restores the model bit for bit.

        The editor runs in evaluation mode here (deterministic gates, frozen statistics) whatever `model.training`
        says; training uses [`~LimeModel.compute_edit`].
        """
        prepared = self.prepare_edit(
            inputs, language, retain_inputs, combine=combine, preserve=preserve, preserve_weight=preserve_weight
        )
        return self._apply_checked(prepared, inputs)

    def prepare_edit(
        self,
        inputs: Any,
        language: str | Sequence[str] | None = None,
        retain_inputs: Any = None,
        *,
        combine: str = "sum",
        preserve: dict[str, torch.Tensor] | None = None,
        preserve_weight: float | None = None,
    ) -> Edit:
        """
        Compute an edit on the model as it is now, without applying it: the returned [`Edit`] is `"created"` and
        `edit.apply()` applies it. Arguments as in [`~LimeModel.edit`], which is `prepare_edit` + `apply` + a check
        that the edited outputs are finite.
        """
        rows = self._combine_rows(combine, inputs)
        _check_preserve(combine, preserve, preserve_weight)
        with torch.no_grad(), self._editor_eval_mode():
            output = self.compute_edit(inputs, language, retain_inputs)
        edit = Edit(_checked_deltas(output.deltas), self.lime_layers, output.info, self._base_model_name())
        if combine == "solve" and preserve is not None:  # one edit: on its own keys (edit_many refits layer by layer)
            preserve_merge([edit], preserve, preserve_weight)
        elif combine == "solve":
            solve_merge([edit])
        return _divided(edit, rows)

    def _combine_rows(self, combine: str, inputs: Any) -> int:
        """The divisor of `combine`: 1 for `"sum"` and `"solve"`, the batch's rows for `"mean"`; a clear error
        otherwise."""
        if combine not in COMBINES:
            raise ValueError(f"`combine` must be one of {list(COMBINES)}, got {combine!r}.")
        if combine == "sum":
            return 1
        if self.lime_config.editor != "mend":
            raise ValueError(
                f"combine={combine!r} joins MEND's per-row updates; the {self.lime_config.editor!r} editor does not "
                "sum its rows (KnowledgeEditor averages them, fine-tuning fits them together)."
            )
        return 1 if combine == "solve" else int(validate_edit_batch(inputs)["input_ids"].shape[0])

    def edit_many(
        self,
        batches: Sequence[Any],
        languages: Sequence[str | Sequence[str] | None] | None = None,
        mode: str = "batch",
        combine: str = "sum",
        preserve: dict[str, torch.Tensor] | None = None,
        preserve_weight: float | None = None,
    ) -> EditGroup:
        """
        Apply several edits, one editor call per batch, and return them as one [`EditGroup`].

        Args:
            batches (`Sequence[Mapping[str, torch.Tensor]]`): Edit batches, as `inputs` of [`~LimeModel.edit`].
            languages (`Sequence`, *optional*): The `language` of each batch (a code or one per row); `None` for an
                adapter without languages.
            mode (`str`, *optional*, defaults to `"batch"`): `"batch"`: every batch's edit is computed on the model
                as it is now, then all are applied (the edits do not see each other). `"sequential"`: each batch's
                edit is computed on the model already holding the previous ones.
            combine (`str`, *optional*, defaults to `"sum"`): `"batch"` mode, MEND: `"mean"` divides every batch's
                update by the total number of rows, so the applied edits are the mean of the rows' updates rather
                than their sum; `"solve"` re-solves the output factors of every batch together so that no row's
                tokens see another row's update (see [`~LimeModel.edit`]).
            preserve (`dict[str, torch.Tensor]`, *optional*): `combine="solve"` only: key moments of what the edits
                should leave alone ([`~hf_lime.tuner.preserve.key_moments`]); the edits are then refitted together
                layer by layer, in forward order, each layer on the inputs the refitted layers below give: every
                edit token follows its own request's MEND edit and the preserved keys change as little as they can
                ([`~hf_lime.tuner.refit.refit_layers`]); requests that do not hold are then weighted up and all
                refitted again (`REFIT_ROUNDS` fits at most). Sequentially, each new edit is computed on the model
                holding the earlier ones and then all of them are refitted together in the same way
                (`SEQUENCE_REFIT_ROUNDS` fits at most per step). The refits read the edit batches again and again:
                [`~hf_lime.LimeEditor.edit_many`] runs them under `hf_lime.prefix_cache.optional_prefix_cache`;
                called directly, wrap the call in it for the same speed.
            preserve_weight (`float`, *optional*): The preserved keys' weight per edit token
                (`hf_lime.tuner.refit.DEFAULT_REFIT_WEIGHT`).

        Returns:
            [`EditGroup`]: the applied edits (`group.revert()` restores the model bit for bit).

        Raises:
            ValueError, TypeError: a bad batch or language (checked for every batch before anything is applied), or
                an edit that fails; whatever was applied before the failure is reverted, so the model is unchanged.
        """
        if mode not in EDIT_MODES:
            raise ValueError(f"`mode` must be one of {list(EDIT_MODES)}, got {mode!r}.")
        pairs = self._checked_batches(batches, languages)
        rows = [self._combine_rows(combine, batch) for batch, _ in pairs]  # a bad value or editor: before any edit
        total = sum(rows) if combine == "mean" else 1
        if combine == "mean" and mode != "batch":
            raise ValueError("combine='mean' joins the rows of one batched edit: use it with mode='batch'.")
        _check_preserve(combine, preserve, preserve_weight)
        edits: list[Edit] = []
        try:
            if mode == "batch" and preserve is not None:
                self._refit_batch(pairs, edits, preserve, preserve_weight)
            elif mode == "batch":
                edits.extend(_divided(self.prepare_edit(batch, language), total) for batch, language in pairs)
                if combine == "solve":  # across every batch at once: no request interferes with another
                    solve_merge(edits)
                for edit, (batch, _) in zip(edits, pairs, strict=True):
                    self._apply_checked(edit, batch)
            elif combine == "solve" and preserve is not None:
                self._refit_sequence(pairs, edits, preserve, preserve_weight)
            elif combine == "solve":  # each fitted to leave the earlier edits' tokens as they were
                protected: dict[str, torch.Tensor] = {}
                for batch, language in pairs:
                    edit = self.prepare_edit(batch, language)
                    protect_merge(edit, protected)
                    edits.append(self._apply_checked(edit, batch))
            else:
                for batch, language in pairs:
                    edits.append(self.edit(batch, language))  # each on the model holding the previous ones
        except BaseException:
            for edit in reversed(edits):
                edit.revert()  # a no-op for an edit that was computed but not applied
            raise
        return EditGroup(edits, mode=mode)

    def _refit_batch(self, pairs: list, edits: list[Edit], preserve: dict, weight: float | None) -> None:
        """`mode="batch"` with `preserve`: every request's MEND edit computed on the model as it is, then all refitted
        together until they hold ([`~LimeModel._refit_until_held`]); `edits` is filled as they are made."""
        state = _RefitState(REFIT_ROUNDS)
        for batch, language in pairs:
            edits.append(self.prepare_edit(batch, language))
            state.add(batch, edits[-1])
        self._refit_until_held(edits, state, preserve, weight)

    def _refit_sequence(self, pairs: list, edits: list[Edit], preserve: dict, weight: float | None) -> None:
        """`mode="sequential"` with `preserve`: each new edit is computed by MEND on the model holding the earlier
        ones; then all the edits so far are reverted and refitted together from their own MEND factors until they
        hold ([`~LimeModel._refit_until_held`]; a request weighted up keeps its weight); `edits` is filled as they
        are made."""
        state = _RefitState(SEQUENCE_REFIT_ROUNDS)
        for batch, language in pairs:
            edit = self.prepare_edit(batch, language)
            for earlier in reversed(edits):
                earlier.revert()
            edits.append(edit)
            state.add(batch, edit)
            self._refit_until_held(edits, state, preserve, weight)

    def _refit_until_held(self, edits: list[Edit], state: _RefitState, preserve: dict, weight: float | None) -> None:
        """Refit `edits` (none applied) layer by layer from their own MEND factors (`state.own`,
        [`~hf_lime.tuner.refit.refit_layers`]) and apply them; while a request does not hold, weight the failed
        ones up (`FAILED_BOOST`) and refit all again, `state.rounds` fits at most."""
        for fit in range(state.rounds):
            for edit, deltas in zip(edits, state.own, strict=True):
                edit.deltas = dict(deltas)
            refit_layers(self, edits, state.batches, preserve, weight, row_weights=state.rows, singles=state.singles)
            for edit in edits:
                edit.apply()
            held = self._rows_held(state.batches)  # refuses non-finite outputs (edit_many then reverts every edit)
            if fit == state.rounds - 1 or all(bool(h.all()) for h in held):
                return
            for edit in reversed(edits):
                edit.revert()
            state.boost(held)

    @torch.no_grad()
    def _rows_held(self, batches: list) -> list[torch.Tensor]:
        """Per edit batch, per row, whether the model gives its target now (every target token the argmax); the
        batches run together, `GROUP_ROWS` rows per forward. Raises the non-finite-outputs `ValueError` of
        [`~LimeModel.edit`] if an edit batch's outputs are not finite."""
        task = known_task(self.model)
        sizes = [batch["input_ids"].shape[0] for batch in batches]
        if task is None:
            for batch in batches:
                self._check_finite_outputs(batch)
            return [torch.ones(size, dtype=torch.bool) for size in sizes]
        held: list[bool] = []
        for group in row_groups(batches):
            scored = target_logits(self.model, concat_batches([validate_edit_batch(b) for b in batches[group]]), task)
            if not bool(torch.isfinite(scored.logits).all()):
                raise ValueError(NON_FINITE)
            held += scored.row_correct()
        return list(torch.tensor(held, dtype=torch.bool).split(sizes))

    def _checked_batches(self, batches: Sequence[Any], languages: Sequence[Any] | None) -> list[tuple[Any, Any]]:
        """`(batch, language)` pairs, each checked by `check_edit_inputs` (the error names the batch's index)."""
        batches = list(batches)
        languages = [None] * len(batches) if languages is None else list(languages)
        if not batches or len(languages) != len(batches):
            raise ValueError(
                f"Pass a non-empty list of edit batches and one language entry per batch; got {len(batches)} "
                f"batches and {len(languages)} language entries."
            )
        for index, (batch, language) in enumerate(zip(batches, languages, strict=True)):
            try:
                self.check_edit_inputs(batch, language)
            except (TypeError, ValueError) as error:
                raise type(error)(f"Edit batch {index}: {error}") from error
        return list(zip(batches, languages, strict=True))

    def _apply_checked(self, edit: Edit, inputs: Any) -> Edit:
        """Apply `edit`, then refuse it (reverted, model unchanged) if it makes `inputs`' outputs non-finite."""
        edit.apply()
        try:
            self._check_finite_outputs(inputs)
        except ValueError:
            edit.revert()
            raise
        return edit

    @torch.no_grad()
    def _check_finite_outputs(self, inputs: Any) -> None:
        """Refuse an applied edit that makes the edit batch's outputs non-finite (the caller reverts it)."""
        if not self._outputs_finite(validate_edit_batch(inputs), known_task(self.model)):
            raise ValueError(NON_FINITE)

    def _outputs_finite(self, batch: dict, task: str | None) -> bool:
        """Whether the model's outputs on `batch` (at its targets for a known task) are all finite; for LMs decided
        from the hidden states where the bound can (`logits_surely_finite`: no vocabulary product)."""
        if task in ("masked_lm", "causal_lm"):
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "lang_ids")}
            finite = logits_surely_finite(self.model, inputs, target_positions(task, batch["labels"]))
            if finite is not None:
                return finite
        if task is not None:
            logits = target_logits(self.model, batch, task).logits
        else:
            logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return bool(torch.isfinite(logits).all())

    def _base_model_name(self) -> str | None:
        """The name the base model knows itself by (config name or folder), else the adapter config's."""
        name = getattr(getattr(self.model, "config", None), "name_or_path", None) or None
        return name or self.lime_config.base_model_name_or_path

    @contextmanager
    def _editor_eval_mode(self):
        """Deterministic gates and frozen statistics while an applied edit is computed."""
        modules = [getattr(self, name)[self._adapter] for name in CONTAINERS]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    @contextmanager
    def apply_deltas(self, deltas: dict[str, LayerDelta]):
        """Run the model with (differentiable) deltas added inside the block; nothing is modified or copied."""
        with apply_functional_deltas(self.lime_layers, deltas):
            yield

    @property
    def applied_edit_ids(self) -> list[int]:
        ids: list[int] = []
        for layer in self.lime_layers.values():
            ids.extend(i for i in layer.applied_edit_ids if i not in ids)
        return ids

    def revert_all(self) -> None:
        """Remove every applied (unmerged) edit, bit for bit. Their handles see it: an `Edit` (or `EditGroup`) that
        was applied is `"reverted"` afterwards, so `merge()` and `to_lora()` refuse it, `revert()` is a no-op and
        `apply()` applies it again. Merged edits stay in the weights."""
        for layer in self.lime_layers.values():
            for edit_id in layer.applied_edit_ids:
                layer.remove_delta(edit_id)


def _check_loaded_editor_state(module: LimeModel, state_dict: dict, prefix: str, *args: Any) -> None:
    """Refuse an incomplete, misshapen or non-finite editor state for an adapter the state dict loads, whatever
    loads it (`PeftModel.from_pretrained`, `load_adapter`, a trainer resuming or keeping its best checkpoint)."""
    own = {f"{prefix}{name}": tensor for name, tensor in module.state_dict().items() if name.startswith(CONTAINERS)}
    adapters = {key.split(".")[len(prefix.split(".")) if prefix else 1] for key in own}
    for adapter in adapters:
        expected = {key: t for key, t in own.items() if any(f"{c}.{adapter}." in key for c in CONTAINERS)}
        if not any(key in state_dict for key in expected):
            continue  # this load is not about that adapter
        missing = sorted(key for key in expected if key not in state_dict)
        problems = [f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}"] if missing else []
        for key, tensor in expected.items():
            loaded = state_dict.get(key)
            if loaded is None:
                continue
            if tuple(loaded.shape) != tuple(tensor.shape):
                problems.append(f"{key} has shape {tuple(loaded.shape)}, expected {tuple(tensor.shape)}")
            elif loaded.is_floating_point() and not bool(torch.isfinite(loaded.to(tensor.dtype)).all()):
                problems.append(f"{key} holds NaN/inf values (after the cast to {tensor.dtype})")
        if problems:
            raise ValueError(
                f"The LIME adapter {adapter!r} being loaded is not a complete, valid editor: "
                + "; ".join(problems[:5])
                + ". Load editors with `LimeEditor.from_pretrained`, which checks every file first."
            )


def _checked_deltas(deltas: dict[str, LayerDelta]) -> dict[str, LayerDelta]:
    """Refuse non-finite updates (one host sync for all layers; the offending layers are named)."""
    if not deltas:
        return deltas
    finite = torch.stack(
        [torch.isfinite(d.B).all() & (torch.isfinite(d.A).all() if d.A is not None else True) for d in deltas.values()]
    )
    if not bool(finite.all()):
        bad = [key for key, ok in zip(deltas, finite.tolist(), strict=True) if not ok]
        raise ValueError(f"The editor produced a non-finite update for layers {bad}; the model was not changed.")
    return deltas


def _check_sizes_against_model(config: LimeConfig, model_config: dict) -> None:
    """Refuse editor sizes far beyond what the base model can use (before anything is allocated)."""
    hidden = model_config.get("hidden_size") or model_config.get("n_embd") or model_config.get("d_model")
    if isinstance(hidden, int) and config.editor == "ke" and config.ke_hidden_dim > 16 * hidden:
        raise ValueError(
            f"`ke_hidden_dim`={config.ke_hidden_dim} is more than 16x the base model's hidden size ({hidden}); "
            f"at most {16 * hidden} is allowed."
        )


def _num_outputs(model: nn.Module) -> int | None:
    """The size of the model's output layer (vocabulary or classes), when it has a recognisable one."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    return int(num_labels) if isinstance(num_labels, int) and head is None else None


# Module-name parts that wrappers insert between a model's own modules (FSDP1's units, activation checkpointing):
# an edited layer keeps the key it had before the model was wrapped.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def unwrapped_name(name: str) -> str:
    """A module name as it was before the model was wrapped (FSDP1 units, activation checkpointing)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _key(name: str) -> str:
    return unwrapped_name(name).replace(".", "-")


def _num_blocks(model_config: dict) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = model_config.get(name)
        if isinstance(value, int):
            return value
    return None


def _block_regex(suffixes: list[str], layers: list[int] | int | None) -> str:
    """A regex matching `<...>.<block index>.<suffix>` for the given blocks (any block when `layers` is None)."""
    if layers is None:
        index = r"\d+"
    else:
        index = "|".join(str(i) for i in ([layers] if isinstance(layers, int) else layers))
    return rf".*\.({index})\.({'|'.join(re.escape(s) for s in suffixes)})"


def _divided(edit: Edit, divisor: int) -> Edit:
    """`edit` (computed, not applied) with its update divided by `divisor`."""
    if divisor > 1:
        edit.deltas = {name: LayerDelta(delta.B / divisor, delta.A) for name, delta in edit.deltas.items()}
    return edit


def _check_preserve(combine: str, preserve: dict | None, weight: float | None) -> None:
    if (preserve is not None or weight is not None) and combine != "solve":
        raise ValueError(f"`preserve` refits MEND's factors: use it with combine='solve', not {combine!r}.")


NON_FINITE = (
    "The edit makes the model's outputs on the edit prompt non-finite (NaN/inf), so it was not applied: the model is "
    "unchanged. Check the base model's weights and dtype, and the editor's step sizes."
)


class _RefitState:
    """What `edit_many`'s refits keep across calls, per request batch: the batch, its edit's own MEND factors, its
    rows' weights, and the single edits' paths (`hf_lime.tuner.refit`'s cache); `rounds`: the fits at most per call."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.batches: list = []
        self.own: list[dict[str, LayerDelta]] = []
        self.rows: list[torch.Tensor] = []
        self.singles: list = []

    def add(self, batch: Any, edit: Edit) -> None:
        """A new request batch and its computed (not refitted) edit."""
        self.batches.append(batch)
        self.own.append(dict(edit.deltas))
        self.rows.append(torch.ones(batch["input_ids"].shape[0], dtype=torch.float64))

    def boost(self, held: list[torch.Tensor]) -> None:
        """The requests that did not hold weighted up by `FAILED_BOOST`, to `FAILED_BOOST ** (rounds - 1)` at most
        (what one call can reach; a sequence keeps weights across its steps and must not compound them)."""
        cap = FAILED_BOOST ** (self.rounds - 1)
        self.rows = [
            (rows * torch.where(ok, 1.0, FAILED_BOOST).double()).clamp_max(cap)
            for rows, ok in zip(self.rows, held, strict=True)
        ]
