"""Loading a saved editor safely: where its files come from, checks that they are what they claim, and the
loading steps that run only after those checks (base model, tokenizer, adapter weights).

Nothing here executes code from the files it reads: configs are JSON, tensors are safetensors, and pickle files
(`*.bin`, `*.pt`, ...) are never opened (the base model is loaded with `use_safetensors=True`). Every failure is a
`ValueError` that names the file and what is wrong; the adapter's tensors are checked against the model before any
weight is loaded, and a failed load leaves a user's base model as it was (see `docs/editor.md`, "Security").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from .languages import check_languages
from .tasks import TASK_SUFFIXES, TASKS, auto_class, infer_task, task_from_class_name  # noqa: F401  (re-exported)
from .tuner.config import PEFT_TYPE, LimeConfig
from .tuner.layer import LimeLayer

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EDITOR_METADATA = "lime_editor.json"
METADATA_FORMAT = "hf_lime.editor"
METADATA_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")  # fmt: skip
# What `snapshot_download` fetches. `adapter_model.bin` is fetched (never opened) only to say why a repo that has
# nothing but a pickle is refused.
HUB_ALLOW_PATTERNS = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, EDITOR_METADATA, "README.md", "adapter_model.bin"]
HUB_ALLOW_PATTERNS += list(TOKENIZER_FILES)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_CONFIG_KEYS = ("peft_type", "editor", "languages", "target_modules", "base_model_name_or_path")
MAX_JSON_BYTES = 4 * 1024 * 1024
# Base-model properties an editor depends on: a mismatch is an error. `SOFT_FIELDS` only warn.
HARD_FIELDS = ("architecture", "model_type", "hidden_size", "num_hidden_layers", "intermediate_size")
SOFT_FIELDS = ("vocab_size", "num_labels")


# ----------------------------------------------------------------------------------------------- files
def check_adapter_files(folder: Path) -> None:
    """Check that `folder` holds `adapter_config.json` and `adapter_model.safetensors` (pickles are refused)."""
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder.")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ValueError(f"No {ADAPTER_CONFIG} in {str(folder)!r}: this is not a saved LIME editor.")
    if (folder / ADAPTER_WEIGHTS).is_file():
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{str(folder)!r} has no {ADAPTER_WEIGHTS}, only {pickles}. hf_lime only loads safetensors and never "
            "unpickles files (a pickle can run arbitrary code). Convert the weights to safetensors with a trusted "
            "tool, or save the editor again with a recent version."
        )
    raise ValueError(f"No {ADAPTER_WEIGHTS} in {str(folder)!r}: the editor's weights are missing.")


def resolve_editor_folder(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    subfolder: str | None = None,
) -> Path:
    """
    The local folder of a saved editor: `repo_id_or_path` itself when it is a folder, else a Hub snapshot of the
    editor's files only (`HUB_ALLOW_PATTERNS`: adapter, metadata, model card, tokenizer; never other weights). With
    `subfolder`, the editor lies in that subfolder of the folder or repo.

    Hub failures that mean "there is no such editor here" (unknown repo or revision, no access, not cached while
    offline, invalid repo id) become a `ValueError` naming the repo; the hub's exception is its `__cause__`.
    Other errors (e.g. a server error) propagate unchanged.
    """
    if subfolder is not None and (not isinstance(subfolder, str) or ".." in Path(subfolder).parts
                                  or Path(subfolder).is_absolute()):  # fmt: skip
        raise ValueError(f"`subfolder` must be a relative path inside the repo, got {subfolder!r}.")
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        inner = path / subfolder if subfolder else path
        if not inner.is_dir():
            raise ValueError(f"{str(path)!r} has no subfolder {subfolder!r}.")
        return inner
    if path.exists():
        raise ValueError(f"{str(repo_id_or_path)!r} is a file; pass the folder of a saved editor or a Hub repo id.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(repo_id_or_path)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
            allow_patterns=[f"{subfolder}/{p}" for p in HUB_ALLOW_PATTERNS] if subfolder else HUB_ALLOW_PATTERNS,
        )
    except RevisionNotFoundError as err:
        raise ValueError(f"Revision {revision!r} does not exist in the Hub repo {repo_id!r}.") from err
    except RepositoryNotFoundError as err:
        raise ValueError(
            f"No editor {repo_id!r}: it is neither a local folder nor a Hub repo you can access (if it is private "
            "or gated, pass `token=`)."
        ) from err
    except LocalEntryNotFoundError as err:
        raise ValueError(
            f"The editor {repo_id!r} (revision {revision or 'main'!r}) is not in the local Hub cache and the Hub was "
            "not reachable (offline mode `HF_HUB_OFFLINE=1`, `local_files_only=True`, or no connection)."
        ) from err
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id: {err}") from err
    folder = Path(folder) / subfolder if subfolder else Path(folder)
    if not folder.is_dir():  # nothing matched the allowed files
        raise ValueError(f"No {ADAPTER_CONFIG} in the Hub repo {repo_id!r}: it holds no saved LIME editor.")
    return folder


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes; a config is at most {MAX_JSON_BYTES} bytes.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.name} in {str(path.parent)!r} is not valid JSON: {err}.") from err
    except RecursionError as err:
        raise ValueError(f"{path.name} in {str(path.parent)!r} nests its JSON too deeply to be a config.") from err


# ----------------------------------------------------------------------------------------------- config
def load_adapter_config(folder: Path) -> LimeConfig:
    """
    Read and validate `adapter_config.json` into a [`LimeConfig`].

    Checks: valid JSON object, `peft_type == "LIME"`, the keys in `REQUIRED_CONFIG_KEYS` present, `languages` a
    list of unique non-empty strings, `target_modules` a string or a list of strings, and every value accepted by
    `LimeConfig`. Keys this version does not know are dropped with a warning, as PEFT does.
    """
    data = _read_json(folder / ADAPTER_CONFIG)
    if not isinstance(data, dict):
        raise ValueError(f"{ADAPTER_CONFIG} must hold a JSON object, got {type(data).__name__}.")
    if data.get("peft_type") != PEFT_TYPE:
        raise ValueError(
            f"{ADAPTER_CONFIG} has peft_type={data.get('peft_type')!r}; LimeEditor loads {PEFT_TYPE!r} adapters only "
            "(load other PEFT adapters with `peft.PeftModel.from_pretrained`)."
        )
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in data]
    if missing:
        raise ValueError(f"{ADAPTER_CONFIG} is missing the required field(s) {missing}.")
    _check_languages(data["languages"])
    _check_target_modules(data["target_modules"])
    known = {f.name for f in dataclasses.fields(LimeConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        warnings.warn(
            f"{ADAPTER_CONFIG} has fields this version of hf_lime does not know, ignored: {unknown}. It was probably "
            "saved by a newer hf_lime or peft; upgrade if the editor misbehaves.",
            stacklevel=3,
        )
    try:
        config = LimeConfig(**{key: value for key, value in data.items() if key in known})
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid {ADAPTER_CONFIG}: {err}") from err
    config.peft_type = PEFT_TYPE
    return config


def _check_languages(languages: Any) -> None:
    """A saved list is checked as any list (`hf_lime.languages`); a bad one is a bad file: `ValueError`."""
    if not isinstance(languages, list):  # JSON: a list, nothing else
        raise ValueError(f"`languages` in {ADAPTER_CONFIG} must be a list of language codes, got {languages!r}.")
    try:
        check_languages(languages, source=ADAPTER_CONFIG, allow_empty=True)
    except TypeError as err:
        raise ValueError(str(err)) from err


def _check_target_modules(target_modules: Any) -> None:
    if isinstance(target_modules, str) and target_modules:
        return
    if isinstance(target_modules, list) and target_modules and all(isinstance(x, str) for x in target_modules):
        return
    raise ValueError(
        f"`target_modules` in {ADAPTER_CONFIG} must be a regex or a list of module names, got {target_modules!r}."
    )


# ----------------------------------------------------------------------------------------------- metadata
def load_editor_metadata(folder: Path) -> dict[str, Any] | None:
    """Read `lime_editor.json` (task, base-model fingerprint, training info, metrics); `None` when absent."""
    path = folder / EDITOR_METADATA
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
        raise ValueError(f"{EDITOR_METADATA} is not an hf_lime editor description (`format` != {METADATA_FORMAT!r}).")
    if not isinstance(data.get("format_version"), int) or data["format_version"] > METADATA_VERSION:
        raise ValueError(
            f"{EDITOR_METADATA} has format_version={data.get('format_version')!r}; this hf_lime reads versions "
            f"<= {METADATA_VERSION}. Upgrade hf_lime."
        )
    if data.get("task") not in TASKS:
        raise ValueError(f"{EDITOR_METADATA} has task={data.get('task')!r}; allowed tasks are {TASKS}.")
    for key in ("base_model", "training_info", "metrics"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ValueError(f"`{key}` in {EDITOR_METADATA} must be a JSON object, got {type(data[key]).__name__}.")
    return data


def check_language_order(config: LimeConfig, saved: Any, rename: Mapping[str, str] | None = None) -> None:
    """The config's `languages` must be the order the editor was saved with (its mask rows), up to an explicit
    renaming `rename` (saved code -> new code)."""
    if saved is None:
        return  # saved before the order was recorded, or written by plain PEFT
    if not isinstance(saved, list) or not all(isinstance(lang, str) for lang in saved):
        raise ValueError(f"`languages` in {EDITOR_METADATA} must be a list of language codes, got {saved!r}.")
    expected = [dict(rename or {}).get(lang, lang) for lang in saved]
    if list(config.languages) != expected:
        raise ValueError(
            f"adapter_config.json lists the languages {list(config.languages)}, but the editor was saved with "
            f"{saved} (mask rows in that order): loading would give languages other languages' masks. Restore the "
            "order, or pass `rename_languages={saved_code: new_code}` if codes were only renamed."
        )


# ----------------------------------------------------------------------------------------------- tensors
def read_tensor_layout(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, dtypes and shapes in a safetensors file's header, without loading any tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            layout = {}
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                layout[name] = (tensor_slice.get_dtype(), tuple(tensor_slice.get_shape()))
    except Exception as err:  # safetensors raises its own error types, OSError and others for broken files
        raise ValueError(
            f"{path.name} in {str(path.parent)!r} is not a readable safetensors file (corrupted or truncated?): {err}"
        ) from err
    return layout


def check_tensor_layout(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, tuple[str, tuple[int, ...]]], filename: str
) -> None:
    """Check that `found` (a file's layout) has exactly the names and shapes of `expected` (the model's tensors)."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for name in sorted(set(expected) & set(found)):
        dtype, shape = found[name]
        want = expected[name]
        if shape != tuple(want.shape):
            problems.append(f"`{name}` has shape {list(shape)}, this model needs {list(want.shape)}")
        elif _is_float_dtype(dtype) != want.dtype.is_floating_point:
            problems.append(f"`{name}` has dtype {dtype}, this model needs {want.dtype}")
    if problems:
        raise ValueError(f"{filename} does not fit this base model: " + "; ".join(problems) + ".")


def _is_float_dtype(safetensors_dtype: str) -> bool:
    return safetensors_dtype.startswith(("F", "BF")) or safetensors_dtype in ("E4M3", "E5M2")


def load_checked_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (already checked with `check_tensor_layout`) on CPU; refuse non-finite values."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise ValueError(f"{path.name} could not be read (corrupted?): {err}") from err
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ValueError(f"{path.name} holds non-finite values (NaN/inf) in {bad}; the file is corrupted.")
    return tensors


# ----------------------------------------------------------------------------------------------- base model
def base_model_fingerprint(base_model: torch.nn.Module, edited_weights: Mapping[str, torch.Tensor]) -> dict:
    """
    What an editor remembers of the base model it was saved with: its class, the sizes in `HARD_FIELDS` and
    `SOFT_FIELDS`, and a SHA-256 of the edited layers' weights (`edited_weights`: module name -> weight).
    """
    config = getattr(base_model, "config", None)
    fingerprint: dict[str, Any] = {"architecture": type(base_model).__name__}
    for name in HARD_FIELDS[1:] + SOFT_FIELDS:
        value = getattr(config, name, None)
        fingerprint[name] = value if isinstance(value, (int, str)) else None
    fingerprint["edited_weights_sha256"] = _weights_digest(edited_weights)
    fingerprint["edited_weights_dtype"] = str(next(iter(edited_weights.values())).dtype) if edited_weights else None
    return fingerprint


def _weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode() + str(list(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def check_base_model(saved: Mapping[str, Any] | None, base_model: torch.nn.Module) -> None:
    """Raise when `base_model` differs from the saved fingerprint in a `HARD_FIELDS` property."""
    if not saved:
        return
    current = base_model_fingerprint(base_model, {})
    diffs = [
        f"{name}: {saved.get(name)!r} (editor) vs {current.get(name)!r} (base model)"
        for name in HARD_FIELDS
        if name in saved and saved.get(name) != current.get(name)
    ]
    if diffs:
        raise ValueError(
            "This editor was trained for another base model: " + "; ".join(diffs) + ". Load the base model it "
            "names in adapter_config.json (`base_model_name_or_path`), or pass that model as `base_model=`."
        )


def soft_base_model_differences(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Differences that do not stop loading but deserve a warning (vocabulary, labels, edited weights)."""
    if not saved:
        return []
    diffs = [
        f"{name}: {saved.get(name)!r} (editor) vs {current.get(name)!r} (base model)"
        for name in SOFT_FIELDS
        if saved.get(name) is not None and saved.get(name) != current.get(name)
    ]
    same_dtype = saved.get("edited_weights_dtype") == current.get("edited_weights_dtype")
    digest = saved.get("edited_weights_sha256")
    if digest and same_dtype and digest != current.get("edited_weights_sha256"):
        diffs.append("the weights of the edited layers differ from those the editor was saved with")
    return diffs


def check_json_serialisable(name: str, value: Any) -> None:
    """Refuse `training_info`/`metrics` that would not survive a save (non-JSON values, NaN)."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a dict, got {type(value).__name__}.")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must hold JSON values only (str, numbers, lists, dicts; no NaN): {err}") from err


# ----------------------------------------------------------------------------------------------- loading
def check_plain_base_model(base_model: nn.Module | None) -> None:
    if base_model is None:
        return
    if isinstance(base_model, PeftModel) or any(isinstance(m, LimeLayer) for m in base_model.modules()):
        raise TypeError("`base_model` must be a plain transformers model, not one that already carries an adapter.")


def load_base_model(config: LimeConfig, task: str | None, dtype: Any, hub: dict, device_map: Any = None) -> nn.Module:
    name = config.base_model_name_or_path
    if not name:
        raise ValueError("adapter_config.json names no base model (`base_model_name_or_path`): pass `base_model=`.")
    kwargs = {"revision": config.revision, "token": hub["token"], "cache_dir": hub["cache_dir"]}
    if hub["local_files_only"]:
        kwargs["local_files_only"] = True
    try:
        if task is None:
            from transformers import AutoConfig

            architectures = AutoConfig.from_pretrained(name, **kwargs).architectures or ["?"]
            task = task_from_class_name(architectures[0])
        extra = {"dtype": dtype} if dtype is not None else {}
        if device_map is not None:
            extra["device_map"] = device_map
        model = auto_class(task).from_pretrained(
            name, use_safetensors=True, trust_remote_code=False, **kwargs, **extra
        )
    except OSError as err:
        raise ValueError(
            f"Could not load the base model {name!r} named in the editor's adapter_config.json: {err}. Pass the "
            "base model as `base_model=`."
        ) from err
    return model.eval()


def load_tokenizer(tokenizer: Any, folder: Path, config: LimeConfig, base_model: nn.Module, hub: dict) -> Any:
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    if tokenizer is not None:
        source, kwargs = str(tokenizer), {k: v for k, v in hub.items() if v is not None}
    elif (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        source, kwargs = str(folder), {}
    else:
        source = config.base_model_name_or_path or getattr(base_model, "name_or_path", None)
        kwargs = {"revision": config.revision, **{k: v for k, v in hub.items() if v is not None}}
        if not source:
            return None
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # a malformed tokenizer file too
        raise ValueError(f"Could not load a tokenizer from {source!r}: {err}. Pass `tokenizer=`.") from err


def attach_adapter(base_model: nn.Module, config: LimeConfig, weights: Path, layout: dict) -> PeftModel:
    """Inject the adapter, check the file's tensors against it, then load them; on failure restore `base_model`."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    config.inference_mode = True
    try:
        model = PeftModel(base_model, config)
        check_tensor_layout(get_peft_model_state_dict(model), layout, ADAPTER_WEIGHTS)
        result = set_peft_model_state_dict(model, load_checked_tensors(weights))
        if result.unexpected_keys:
            raise ValueError(f"{ADAPTER_WEIGHTS} has tensors this adapter cannot hold: {result.unexpected_keys}.")
    except Exception:
        _strip_lime_layers(base_model)
        raise
    return model.eval()


def _strip_lime_layers(base_model: nn.Module) -> None:
    """Put the original layers back wherever an adapter was (partly) injected, and drop PEFT's attribute."""
    for name, module in list(base_model.named_modules()):
        if isinstance(module, LimeLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(base_model.get_submodule(parent_name), child, module.get_base_layer())
    if "peft_config" in vars(base_model):
        delattr(base_model, "peft_config")
