"""`LimeEditor`: the user's facade over a LIME adapter: load, save and push editors; edit and predict with text."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from .atomic import is_local_folder, read_folder, write_folder
from .base_model import (
    attach_adapter,
    base_model_fingerprint,
    check_base_model,
    check_plain_base_model,
    load_base_model,
    load_tokenizer,
    soft_base_model_differences,
)
from .data.encoding import pad_batch
from .edit_requests import EditRequest, RequestError, check_request_languages, parse_requests
from .editor_folder import (
    METADATA_FORMAT,
    METADATA_VERSION,
    check_json_serialisable,
    read_editor_folder,
    write_description,
    write_editor_folder,
)
from .head import target_logits
from .hub_download import resolve_editor_folder
from .lora_export import export_edits_as_lora, module_name
from .model_card import render_model_card
from .prefix_cache import optional_prefix_cache
from .tasks import check_task, infer_task
from .text_io import answer_rows, encode_text, masked_prompt, predict_text, rank_text, score_text
from .tuner import LimeConfig
from .tuner.config import PEFT_TYPE
from .tuner.edit import Edit
from .tuner.edit_group import EDIT_MODES, EditGroup
from .tuner.preserve import key_moments

__all__ = ["LimeEditor", "infer_task", "masked_prompt"]


class LimeEditor:
    """
    A trained cross-lingual editor with its base model and tokenizer: edit with text, predict, save, push, pull.

    Args:
        model (`peft.PeftModel`): A base model carrying a LIME adapter (`get_peft_model(base, LimeConfig(...))`).
        tokenizer (`PreTrainedTokenizerBase`, *optional*, defaults to `None`): The base model's tokenizer; needed for
            text-level `edit`/`predict`.
        task (`str`, *optional*, defaults to `None`): `"masked_lm"`, `"seq_cls"` or `"causal_lm"`; inferred from the
            base model's class (transformers' Auto mappings, then the class-name suffix) when `None`.
        training_info (`dict`, *optional*, defaults to `None`): What training recorded (data, steps...), saved in
            `lime_editor.json` and shown in the model card.
        metrics (`dict`, *optional*, defaults to `None`): Evaluation results, saved and shown in the model card.

    Example:

    ```py
    >>> from hf_lime import LimeEditor
    >>> editor = LimeEditor.from_pretrained("org/mbert-lime-mlama")  # doctest: +SKIP
    >>> edit = editor.edit("The capital of France is [MASK].", "Lyon", language="en")  # doctest: +SKIP
    >>> editor.predict("La capitale de la France est [MASK].")  # doctest: +SKIP
    'Lyon'
    >>> edit.revert()  # doctest: +SKIP

    ```
    """

    def __init__(
        self,
        model: PeftModel,
        tokenizer: Any = None,
        task: str | None = None,
        training_info: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, PeftModel) or model.peft_config[model.active_adapter].peft_type != PEFT_TYPE:
            raise TypeError(
                f"`model` must be a peft.PeftModel with a LIME adapter, got {type(model).__name__}; create one with "
                "`LimeEditor.from_base_model(base, LimeConfig(...))` or load one with `LimeEditor.from_pretrained`."
            )
        task = task or infer_task(model.get_base_model())
        check_task(task)
        check_json_serialisable("training_info", training_info)
        check_json_serialisable("metrics", metrics)
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.training_info = dict(training_info) if training_info else None
        self.metrics = dict(metrics) if metrics else None
        self._warned_edit_batch = False  # edit_many warns once about batches larger than those trained for

    @classmethod
    def from_base_model(cls, base_model: nn.Module, config: LimeConfig, tokenizer: Any = None, **kwargs) -> LimeEditor:
        """A new (untrained) editor: attach a LIME adapter built from `config` to `base_model`."""
        from peft import get_peft_model

        check_plain_base_model(base_model)
        return cls(get_peft_model(base_model, config), tokenizer, **kwargs)

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"LimeEditor(task={self.task!r}, editor={cfg.editor!r}, languages={cfg.languages}, "
            f"use_lime_mask={cfg.use_lime_mask}, base={cfg.base_model_name_or_path!r})"
        )

    @property
    def config(self) -> LimeConfig:
        return self.model.peft_config[self.model.active_adapter]

    @property
    def languages(self) -> list[str]:
        return list(self.config.languages)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def trained_edit_batch_size(self) -> int | None:
        """The number of edits one editor call made in training (`training_info["edit_batch_size"]`, else
        `training_info["n_edit"]`), or `None` when the training did not record it (an untrained editor, fine-tuning,
        an editor saved by an older version)."""
        info = self.training_info or {}
        value = info.get("edit_batch_size", info.get("n_edit"))
        return value if _positive_int(value) else None

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        base_model: nn.Module | None = None,
        tokenizer: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: Any = None,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        rename_languages: Mapping[str, str] | None = None,
    ) -> LimeEditor:
        """
        Load a saved editor from a local folder or the Hub, after checking every file (see `docs/editor.md`).

        Args:
            repo_id_or_path (`str` or `os.PathLike`): A folder written by `save_pretrained`, or a Hub repo id.
            base_model (`nn.Module`, *optional*, defaults to `None`): The base model. `None` loads the one named by
                `base_model_name_or_path` in `adapter_config.json` with the Auto class of the editor's task.
            tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*, defaults to `None`): A tokenizer or where to
                load one. `None`: the tokenizer saved with the editor, else the base model's.
            revision (`str`, *optional*, defaults to `None`): Branch or commit of the editor's Hub repo.
            token (`str` or `bool`, *optional*, defaults to `None`): Hub token.
            cache_dir (`str`, *optional*, defaults to `None`): Hub cache folder.
            local_files_only (`bool`, *optional*, defaults to `None`): Only use cached files.
            device (`str` or `torch.device`, *optional*, defaults to `None`): Move the editor there.
            dtype (`torch.dtype` or `str`, *optional*, defaults to `None`): dtype of a base model loaded here
                (transformers 5's name; `torch_dtype` is the older one and is accepted too).
            device_map (`str` or `dict`, *optional*, defaults to `None`): Passed to the base model's
                `from_pretrained` when the base model is loaded here.
            subfolder (`str`, *optional*, defaults to `None`): The editor's files lie in this subfolder of the folder
                or Hub repo.
            torch_dtype (`torch.dtype` or `str`, *optional*, defaults to `None`): Alias of `dtype`.
            rename_languages (`Mapping[str, str]`, *optional*, defaults to `None`): Saved language code -> the code
                `adapter_config.json` now uses (e.g. `{"zh": "zh-Hans"}`). Without it, a config whose `languages`
                differ from the order the editor was saved with (`lime_editor.json`) is refused: its mask rows would
                serve other languages.

        Returns:
            [`LimeEditor`]

        Raises:
            ValueError: the editor is not found (unknown repo or revision, not cached offline), or a file is invalid:
                config, weights (corrupted, missing/extra tensors, wrong shapes, pickle only) or a base model that is
                not the one the editor was trained for. Nothing is returned and `base_model` is left as it was.
        """
        check_plain_base_model(base_model)
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"Pass `dtype` or its alias `torch_dtype`, not both ({dtype!r} vs {torch_dtype!r}).")
        dtype = dtype if dtype is not None else torch_dtype
        hub = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        local = Path(repo_id_or_path).expanduser()
        local = local / subfolder if isinstance(subfolder, str) and local.is_dir() else local
        guard = read_folder(local) if is_local_folder(local) else contextlib.nullcontext()
        with guard:  # a local folder is read under its lock: never a mix of two saves
            folder = resolve_editor_folder(repo_id_or_path, revision=revision, subfolder=subfolder, **hub)
            return cls._load(folder, base_model, tokenizer, dtype, device_map, device, hub, rename_languages)

    @classmethod
    def _load(cls, folder: Path, base_model, tokenizer, dtype, device_map, device, hub: dict,
              rename_languages: Mapping[str, str] | None = None) -> LimeEditor:  # fmt: skip
        saved = read_editor_folder(folder, rename_languages)  # every file checked; nothing loaded yet
        config, metadata = saved.config, saved.metadata
        if base_model is None:
            base_model = load_base_model(config, saved.task, dtype, hub, device_map=device_map)
        task = saved.task or infer_task(base_model)
        check_base_model(metadata.get("base_model"), base_model)
        tokenizer = load_tokenizer(tokenizer, folder, config, base_model, hub)
        model = attach_adapter(base_model, config, saved.weights, saved.layout)
        editor = cls(model, tokenizer, task, metadata.get("training_info"), metadata.get("metrics"))
        differences = soft_base_model_differences(metadata.get("base_model"), editor._fingerprint())
        if differences:
            warnings.warn(
                "The base model differs from the one this editor was saved with: " + "; ".join(differences) + ".",
                stacklevel=2,
            )
        if device is not None:
            editor.model.to(device)
        return editor

    # ------------------------------------------------------------------------------------------- saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        base_model_name_or_path: str | None = None,
        save_tokenizer: bool = True,
        repo_id: str | None = None,
        license: str | None = None,
    ) -> Path:
        """
        Save the editor: `adapter_config.json`, `adapter_model.safetensors`, `lime_editor.json` (task, base-model
        fingerprint, training info, metrics), the tokenizer files and a README.md model card.

        The save is all-or-nothing (`hf_lime.atomic.write_folder`): the files are written to a temporary folder next
        to `save_directory`, which then replaces it in one swap (other files already in the folder are kept). A failed
        or killed save leaves the previous version complete; concurrent saves serialise, and `from_pretrained` never
        reads a mix of two versions. Applied edits are not part of the editor (export them with
        [`~LimeEditor.export_lora`]).

        Args:
            save_directory (`str` or `os.PathLike`): Output folder (created if needed).
            base_model_name_or_path (`str`, *optional*, defaults to `None`): Hub id or folder of the base model, stored
                in the config; required when the adapter does not already name one.
            save_tokenizer (`bool`, *optional*, defaults to `True`): Also save the tokenizer files.
            repo_id (`str`, *optional*, defaults to `None`): Repo id shown in the model card's usage snippet.
            license (`str`, *optional*, defaults to `None`): The model card's `license` (a Hub license id such as
                `"apache-2.0"`; usually the base model's).

        Returns:
            `Path`: the folder.
        """
        self._set_base_name(base_model_name_or_path)
        target = Path(save_directory)
        return write_folder(
            target, lambda folder: self._write_files(folder, save_tokenizer, repo_id or str(target), license)
        )

    def _set_base_name(self, base_model_name_or_path: str | None) -> None:
        name = base_model_name_or_path or self.config.base_model_name_or_path
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                "The editor does not know its base model (`base_model_name_or_path` is empty): pass "
                "`base_model_name_or_path=` (a Hub id or a folder written by the base model's save_pretrained)."
            )
        if Path(name).expanduser().is_dir():  # a local folder: store it absolute, to load from any directory
            name = str(Path(name).expanduser().resolve())
        self.config.base_model_name_or_path = name

    def _write_files(self, folder: Path, save_tokenizer: bool, repo_id: str, license: str | None = None) -> None:
        card = self._card(repo_id, license)
        write_editor_folder(folder, self.model, self.tokenizer, self._metadata(), card, save_tokenizer)

    def write_description(
        self, folder: str | os.PathLike, repo_id: str | None = None, license: str | None = None
    ) -> None:
        """Write `lime_editor.json` (task, base-model fingerprint, training info, metrics) and the README.md model
        card (with `license` when given) into `folder`, beside adapter files written by PEFT (used by `LimeTrainer`
        for its saves)."""
        write_description(Path(folder), self._metadata(), self._card(repo_id or str(folder), license))

    def _card(self, repo_id: str, license: str | None) -> str:
        cfg = self.config
        return render_model_card(
            base_model=cfg.base_model_name_or_path,
            task=self.task,
            editor=cfg.editor,
            languages=cfg.languages,
            use_lime_mask=cfg.use_lime_mask,
            repo_id=repo_id,
            training_info=self.training_info,
            metrics=self.metrics,
            license=license,
        )

    def _metadata(self) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "format_version": METADATA_VERSION,
            "hf_lime_version": _library_version(),
            "task": self.task,
            "languages": list(self.config.languages),  # the mask rows' order, checked against the config on load
            "base_model": self._fingerprint(),
            "training_info": self.training_info,
            "metrics": self.metrics,
        }

    def _fingerprint(self) -> dict[str, Any]:
        layers = self.model.base_model.lime_layers
        weights = {module_name(key): layer.linear_weight() for key, layer in layers.items()}
        return base_model_fingerprint(self.model.get_base_model(), weights)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        base_model_name_or_path: str | None = None,
        save_tokenizer: bool = True,
        license: str | None = None,
    ):
        """
        Upload the editor to the Hub: `create_repo(exist_ok=True)`, then one commit of the `save_pretrained` files.

        Args:
            repo_id (`str`): `"org/name"`.
            private (`bool`, *optional*, defaults to `None`): Visibility of a new repo.
            token (`str` or `bool`, *optional*, defaults to `None`): Hub token.
            commit_message (`str`, *optional*, defaults to `None`): Commit message.
            revision (`str`, *optional*, defaults to `None`): Branch to push to (created from `main` if missing).
            create_pr (`bool`, *optional*, defaults to `False`): Open a pull request instead of committing.
            base_model_name_or_path (`str`, *optional*, defaults to `None`): As in [`~LimeEditor.save_pretrained`].
            save_tokenizer (`bool`, *optional*, defaults to `True`): Also upload the tokenizer files.
            license (`str`, *optional*, defaults to `None`): The model card's `license`.

        Returns:
            `huggingface_hub.CommitInfo`: the commit (`.commit_url`, `.oid`).
        """
        from huggingface_hub import HfApi

        self._set_base_name(base_model_name_or_path)
        if Path(self.config.base_model_name_or_path).expanduser().exists():
            warnings.warn(
                f"The editor names a local base model ({self.config.base_model_name_or_path!r}); people loading it "
                "from the Hub will need that folder or must pass `base_model=`.",
                stacklevel=2,
            )
        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main") and not create_pr:
            api.create_branch(repo.repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(
                Path(tmp) / "editor", save_tokenizer=save_tokenizer, repo_id=repo.repo_id, license=license
            )
            return api.upload_folder(
                repo_id=repo.repo_id,
                folder_path=folder,
                commit_message=commit_message or "Upload LIME editor (hf_lime)",
                revision=revision,
                create_pr=create_pr,
            )

    # ------------------------------------------------------------------------------------------- editing
    def edit(
        self,
        text: Any,
        target: Any,
        language: str | Sequence[str] | None = None,
        max_length: int = 128,
        combine: str | None = None,
        preserve: Any = None,
        preserve_weight: float | None = None,
    ) -> Edit:
        """
        Edit the model so that `text` gives `target`, and return the applied [`Edit`] (`edit.revert()` undoes it).

        Args:
            text (`str`, `tuple[str, str]` or `list`): Masked LMs: a prompt with the tokenizer's mask token, `"[MASK]"`
                or `"[Y]"` where the answer goes (one placeholder, expanded to one mask per target token; or as many
                masks as the target has tokens). Classifiers: a text or a `(premise, hypothesis)` tuple. Causal LMs:
                the prompt; the target is its continuation. A list edits a batch at once. A `{language: prompt}`
                dict gives the same fact's prompt in several languages, each row edited in its own language.
            target (`str`, `int`, `list` or `dict`): The new answer: a string (LMs), a label name or class id
                (classifiers); a list with one per text for a batch. A `{language: answer}` dict gives the answer as
                each language names it: with one prompt, one row per answer (the prompt in its editing language
                `language`); with a `{language: prompt}` dict, one answer per prompt (same keys).
            language (`str` or `list[str]`, *optional*, defaults to `None`): The editing language (or one per text);
                required when the editor has languages. Left out with a `{language: prompt}` dict (its keys are the
                rows' languages).
            max_length (`int`, *optional*, defaults to `128`): Maximum tokens per text.
            combine (`str`, *optional*): MEND: `"sum"` joins the rows as MEND's batched edit does (each row a full
                step, as for different facts), `"mean"` divides that update by the number of rows (one step shared by
                rows stating one fact); see [`~LimeModel.edit`]. Default: `"mean"` for a MEND edit given as a
                per-language dict (one fact; measured on the demo: every language's own answer 0.43 at same-relation
                locality 0.91, against 0.37 at 0.38 with `"sum"`), `"sum"` otherwise; `"solve"` with `preserve`.
            preserve (*optional*): MEND: what the edit should leave alone, as `(prompt, answer)` facts or the moments
                [`~LimeEditor.key_moments`] returned (compute them once for many edits); the edit is then the
                least-squares update that gives its tokens their MEND change and those keys as little change as it
                can (`combine="solve"`, [`~hf_lime.tuner.merge.preserve_merge`]).
            preserve_weight (`float`, *optional*): The preserved keys' weight per edit token
                (`hf_lime.tuner.merge.DEFAULT_PRESERVE_WEIGHT`).

        Returns:
            [`Edit`]: the applied edit (one batched edit of every row: one revert undoes them all).

        Example, one fact with its answer in each language's own words (a product feature: what such an edit does
        in the other languages is given the answer, so it is never counted as *transfer*):

        ```py
        >>> editor.edit({"en": "The capital of Ethiopia is [MASK].", "fr": "La capitale de l'Éthiopie est [MASK]."},
        ...             {"en": "Addis Ababa", "fr": "Addis-Abeba"})  # doctest: +SKIP
        ```
        """
        if combine is None and preserve is not None:
            combine = "solve"
        if combine is None:
            one_fact = isinstance(text, Mapping) or isinstance(target, Mapping)
            combine = "mean" if one_fact and self.config.editor == "mend" else "sum"
        texts, targets, language = answer_rows(text, target, language)
        examples = [self._encode(t, y, max_length) for t, y in zip(texts, targets, strict=True)]
        batch = {key: value.to(self.device) for key, value in pad_batch(self.tokenizer, examples).items()}
        rows = language if language is None or isinstance(language, str) else list(language)
        preserve = self._moments(preserve, max_length)
        return self.model.base_model.edit(
            batch, language=rows, combine=combine, preserve=preserve, preserve_weight=preserve_weight
        )

    def edit_many(
        self,
        requests: Sequence[Any],
        mode: str = "batch",
        batch_size: int | None = None,
        max_length: int = 128,
        combine: str = "sum",
        preserve: Any = None,
        preserve_weight: float | None = None,
    ) -> EditGroup:
        """
        Apply several edits at once and return them as one [`~hf_lime.tuner.edit_group.EditGroup`]: it reverts them
        all bit for bit, exports them as one LoRA adapter, and says which requests did not take (`group.held`,
        `group.failed`).

        Args:
            requests (`list`): `(prompt, answer, language)` tuples or dicts with the keys `prompt`, `answer` and
                `language`; prompts and answers as `text` and `target` of [`~LimeEditor.edit`] (one each).
            mode (`str`, *optional*, defaults to `"batch"`): `"batch"`: one editor call over a padded batch of all
                requests, computed on the model as it is now (the requests do not see each other). `"sequential"`:
                one edit per request, each computed on the model already holding the previous ones.
            batch_size (`int`, *optional*, defaults to `None`): `"batch"` only: at most this many requests per editor
                call (to bound memory); every chunk is computed on the model as it was before the call, then all are
                applied. `None`: all requests in one call.
            max_length (`int`, *optional*, defaults to `128`): Maximum tokens per prompt.
            combine (`str`, *optional*, defaults to `"sum"`): `"batch"` mode, MEND: `"mean"` applies the mean of the
                requests' updates instead of their sum (every chunk divided by the number of requests); `"solve"`
                re-solves the output factors of all requests together so that each request's tokens see what its
                edit alone would give them (`hf_lime.tuner.merge`; on the demo's model it keeps 10 and 25 edits
                holding where the sum does not, docs/results.md §5a).
            preserve (*optional*): `combine="solve"` only: what the edits should leave alone, as `(prompt, answer)`
                pairs (facts the model knows; read by [`~LimeEditor.key_moments`]) or the moments it returned. The
                edits are then refitted together layer by layer, each layer on the inputs the refitted layers below
                give (MEMIT's form and order with MEND's per-token targets, [`~hf_lime.tuner.refit.refit_layers`]);
                the requests that did not hold are weighted up and all refitted again (in a sequence, at every step).
            preserve_weight (`float`, *optional*): The preserved keys' weight per edit token
                (`hf_lime.tuner.refit.DEFAULT_REFIT_WEIGHT`).

        Warns (once per editor) when `mode="batch"` makes more edits than the editor made at once in training
        ([`~LimeEditor.trained_edit_batch_size`], from `training_info`; train with `n_edit` for larger batches).

        Returns:
            [`EditGroup`]: the applied edits, with `held[i]` whether request `i`'s answer is what the model gives
            (every answer token is the argmax at its position, as `predict` reads it) with all the edits applied.

        Raises:
            ValueError: a bad request, named by its index (`RequestError`, with `.index`); every request is checked
                before anything is applied. If an edit fails midway, the edits applied so far are reverted: the
                model is left as it was.

        What a batch computes depends on the editor. MEND transforms each token's `(x, δ)` on its own after
        normalising each request's gradients, so a batch's `ΔW` is the sum of the requests' edits computed alone
        (up to rounding), chunked or not. KnowledgeEditor's gradient part adds up the same way but it averages the
        requests' shift terms and uses the raw gradient of the batch's mean loss, and fine-tuning minimises the
        batch's mean loss: for these a batch is not the sum of single edits.

        The edits are made and checked under a frozen-prefix cache ([`~hf_lime.prefix_cache.optional_prefix_cache`]):
        every read of an edit batch after the first skips the blocks below the edited ones (outputs equal up to
        float rounding).
        """
        if mode not in EDIT_MODES:
            raise ValueError(f"`mode` must be one of {list(EDIT_MODES)}, got {mode!r}.")
        if batch_size is not None and not _positive_int(batch_size):
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
        parsed, examples = self.check_requests(requests, max_length)
        size = 1 if mode == "sequential" else batch_size or len(parsed)
        if mode == "batch":
            self._check_edit_batch_size(len(parsed))
        starts = range(0, len(parsed), size)
        batches = [self._padded(examples[i : i + size]) for i in starts]
        languages = [self._row_languages(parsed[i : i + size]) for i in starts]
        preserve = self._moments(preserve, max_length)
        with optional_prefix_cache(self.model):  # the edit batches are read again and again; only top blocks change
            group = self.model.base_model.edit_many(
                batches, languages, mode=mode, combine=combine, preserve=preserve, preserve_weight=preserve_weight
            )
            group.held = self._held(examples)
        return group

    def _moments(self, preserve: Any, max_length: int) -> dict[str, torch.Tensor] | None:
        """`preserve` as key moments: given, or read from `(prompt, answer)` facts."""
        return (
            preserve
            if preserve is None or isinstance(preserve, dict)
            else self.key_moments(preserve, max_length=max_length)
        )

    def key_moments(
        self, facts: Sequence[Any], batch_size: int = 32, max_length: int = 128
    ) -> dict[str, torch.Tensor]:
        """
        What the edited layers see on `facts`, for `edit_many(..., preserve=...)`: per edited layer, the mean `x xᵀ`
        of its input over the facts' tokens ([`~hf_lime.tuner.preserve.key_moments`]), on the model as it is now.

        Args:
            facts (`list`): `(prompt, answer)` pairs or dicts with `prompt` and `answer`, encoded as edits are
                (for a masked LM the prompt with as many masks as the answer has tokens).
            batch_size (`int`, *optional*, defaults to `32`): Facts per forward.
            max_length (`int`, *optional*, defaults to `128`): Maximum tokens per prompt.

        Returns:
            `dict[str, torch.Tensor]`: layer key -> `(d_in, d_in)` float64 matrix.

        Raises:
            ValueError: no fact, or a fact that is not a `(prompt, answer)` pair.
        """
        examples = [self._encode(*_fact_pair(fact, index), max_length) for index, fact in enumerate(facts)]
        if not examples or not _positive_int(batch_size):
            raise ValueError(f"Pass at least one fact and a positive batch_size; got {len(examples)}, {batch_size!r}.")
        batches = (self._padded(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size))
        return key_moments(self.model.base_model, batches)

    def _check_edit_batch_size(self, size: int) -> None:
        """Warn (once per editor) when a batch applies more edits, all computed on the model as it is, than one
        training edit made (`batch_size` chunks change nothing here: every chunk is computed on that model and all
        are applied together)."""
        trained = self.trained_edit_batch_size
        if trained is None or size <= trained or self._warned_edit_batch:
            return
        self._warned_edit_batch = True
        warnings.warn(
            f"This editor was trained to make {trained} edit(s) at once (training_info's edit_batch_size / n_edit); "
            f"this batch makes {size}. Edits made together beyond what the editor was trained for may hold less "
            f"well: train it with n_edit={size} (examples/train_lime.py --n_edit), or edit in mode='sequential'.",
            UserWarning,
            stacklevel=3,
        )

    def check_requests(self, requests: Sequence[Any], max_length: int = 128) -> tuple[list[EditRequest], list[dict]]:
        """
        Parse and check edit requests against this editor (types, languages, prompts, answers, lengths) without
        editing anything; the requests and their encoded examples.

        Raises:
            RequestError: (a `ValueError`) the first bad request, with its index. TypeError: not a non-empty list.
        """
        parsed = parse_requests(requests)
        check_request_languages(parsed, self.languages)
        examples = []
        for index, request in enumerate(parsed):
            try:
                example = self._encode(request.prompt, request.answer, max_length)
                self.model.base_model.check_edit_inputs(self._padded([example]), self._row_languages([request]))
            except (TypeError, ValueError) as error:
                raise RequestError(index, str(error)) from error
            examples.append(example)
        return parsed, examples

    def _padded(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in pad_batch(self.tokenizer, examples).items()}

    def _row_languages(self, requests: Sequence[EditRequest]) -> list[str] | None:
        return [r.language for r in requests] if self.languages else None

    @torch.no_grad()
    def _held(self, examples: Sequence[dict[str, Any]]) -> list[bool]:
        """Per example, whether every target token is the model's argmax (one request at a time, no padding)."""
        return [all(target_logits(self.model, self._padded([e]), self.task).row_correct()) for e in examples]

    def _encode(self, text: Any, target: Any, max_length: int) -> dict[str, Any]:
        return encode_text(self.model.get_base_model(), self._require_tokenizer(), self.task, text, target, max_length)

    @torch.no_grad()
    def predict(
        self,
        text: Any,
        language: str | None = None,
        num_tokens: int | None = None,
        max_new_tokens: int = 8,
        max_length: int = 128,
        candidates: Sequence[str] | None = None,
    ) -> str | list[str]:
        """
        The model's answer (with the edits currently applied), in the form `edit` takes targets.

        Args:
            text (`str`, `tuple[str, str]` or `list`): As in [`~LimeEditor.edit`].
            language (`str`, *optional*, defaults to `None`): Checked against the editor's languages; predictions
                do not depend on it.
            num_tokens (`int`, *optional*, defaults to `None`): Masked LMs: how many tokens to predict at a single
                placeholder (default: as many masks as the text has).
            max_new_tokens (`int`, *optional*, defaults to `8`): Causal LMs: length of the greedy continuation.
            max_length (`int`, *optional*, defaults to `128`): Maximum tokens per text.
            candidates (`list[str]`, *optional*): Masked LMs: return the best of these answers instead (each scored
                by the mean log-probability of its tokens in the prompt with as many masks, as mLAMA's typed querying
                and `evaluate_editor(scoring="candidates")` do).

        Returns:
            `str` (or a list for a list of texts): the decoded tokens at the masks (or the best candidate), the label
            name, or the stripped continuation.
        """
        self._require_tokenizer()
        if language is not None and self.languages and language not in self.languages:
            raise ValueError(f"Unknown language {language!r}; this editor knows {self.languages}.")
        texts = text if isinstance(text, list) else [text]
        if candidates is not None:
            if self.task != "masked_lm":
                raise ValueError(f"`candidates` ranks answers of a masked LM; this editor's task is {self.task!r}.")
            answers = [rank_text(self.model, self.tokenizer, t, candidates, max_length) for t in texts]
            return answers if isinstance(text, list) else answers[0]
        options = {"num_tokens": num_tokens, "max_new_tokens": max_new_tokens, "max_length": max_length}
        answers = [predict_text(self.model, self.tokenizer, self.task, t, **options) for t in texts]
        return answers if isinstance(text, list) else answers[0]

    def score(self, text: Any, target: Any, max_length: int = 128) -> float:
        """
        How likely the model (with the edits currently applied) finds `target` for `text`: the mean log-probability
        of its tokens at the placeholder (masked LMs), of its continuation (causal LMs), or of the class
        (classifiers) — minus the loss an edit of `text` to `target` would start from.

        Args:
            text (`str` or `tuple[str, str]`): As in [`~LimeEditor.edit`] (one text).
            target (`str` or `int`): As in [`~LimeEditor.edit`] (one target).
            max_length (`int`, *optional*, defaults to `128`): Maximum tokens.

        Returns:
            `float`: the mean log-probability (≤ 0; `math.exp` of it is the geometric-mean token probability).
        """
        tokenizer = self._require_tokenizer()
        return score_text(self.model, tokenizer, self.task, text, target, max_length)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("This editor has no tokenizer: set `editor.tokenizer` or pass `tokenizer=` when loading.")
        return self.tokenizer

    def revert_all(self) -> None:
        """Revert every applied (unmerged) edit, bit for bit; their handles become `"reverted"` (see
        [`~hf_lime.LimeModel.revert_all`])."""
        self.model.base_model.revert_all()

    def evaluate(self, items: Any, **kwargs: Any) -> Any:
        """Cross-lingual evaluation: `hf_lime.evaluation.evaluate_editor(model, tokenizer, items, task, **kwargs)`."""
        from .evaluation import evaluate_editor

        return evaluate_editor(self.model, self.tokenizer, items, task=self.task, **kwargs)

    def export_lora(self, edits: Edit | EditGroup | Sequence[Edit | EditGroup], path: str | os.PathLike) -> Path:
        """Write `edits` (edits or groups of them, summed) as a plain PEFT LoRA adapter for this editor's base model
        (see `lora_export`). Only applied or merged edits are exported: a reverted one raises a `ValueError` and
        nothing is written."""
        self._set_base_name(None)
        return export_edits_as_lora(edits, path, self.config.base_model_name_or_path, revision=self.config.revision)


def _fact_pair(fact: Any, index: int) -> tuple[str, str]:
    """`(prompt, answer)` of a fact given as a pair or a dict; a clear error naming its index otherwise."""
    if isinstance(fact, dict):
        fact = (fact.get("prompt"), fact.get("answer"))
    if not isinstance(fact, tuple | list) or len(fact) != 2 or not all(isinstance(v, str) and v for v in fact):
        raise ValueError(f"Fact {index}: expected a (prompt, answer) pair of non-empty strings, got {fact!r}.")
    return fact[0], fact[1]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _library_version() -> str:
    from .version import __version__

    return __version__
