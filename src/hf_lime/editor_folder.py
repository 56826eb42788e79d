"""A saved editor's folder: its files, one reader that returns a checked description (`read_editor_folder` →
`EditorFolder`) and one writer (`write_editor_folder`).

Nothing here executes code from the files it reads: configs are JSON, tensors are safetensors, and pickle files
(`*.bin`, `*.pt`, ...) are never opened. Every failure is a `ValueError` that names the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from .languages import check_languages
from .safetensors_io import read_tensor_layout
from .tasks import TASKS
from .tuner.config import PEFT_TYPE, LimeConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EDITOR_METADATA = "lime_editor.json"
METADATA_FORMAT = "hf_lime.editor"
METADATA_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")  # fmt: skip
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_CONFIG_KEYS = ("peft_type", "editor", "languages", "target_modules", "base_model_name_or_path")
MAX_JSON_BYTES = 4 * 1024 * 1024


@dataclass
class EditorFolder:
    """What `read_editor_folder` found, checked: the folder, its config, its description and its weights' layout.

    Attributes:
        folder (`Path`): The folder.
        config ([`LimeConfig`]): From `adapter_config.json`, validated.
        metadata (`dict`): `lime_editor.json` (`{}` for an adapter written by plain PEFT).
        layout (`dict`): Name -> (dtype, shape) of every tensor in `adapter_model.safetensors` (no tensor loaded).
    """

    folder: Path
    config: LimeConfig
    metadata: dict[str, Any]
    layout: dict[str, tuple[str, tuple[int, ...]]]

    @property
    def weights(self) -> Path:
        return self.folder / ADAPTER_WEIGHTS

    @property
    def task(self) -> str | None:
        return self.metadata.get("task")


def read_editor_folder(folder: Path, rename_languages: Mapping[str, str] | None = None) -> EditorFolder:
    """
    The one reader of a saved editor's folder: check its files (safetensors present, no pickle), read and validate
    `adapter_config.json` and `lime_editor.json`, check the language order, and read the weights' layout — no
    weight is loaded and nothing from the folder is executed. Every problem is a `ValueError` naming the file.
    """
    check_adapter_files(folder)
    config = load_adapter_config(folder)
    metadata = load_editor_metadata(folder) or {}
    check_language_order(config, metadata.get("languages"), rename_languages)
    return EditorFolder(folder, config, metadata, read_tensor_layout(folder / ADAPTER_WEIGHTS))


def write_editor_folder(
    folder: Path, model: PeftModel, tokenizer: Any, metadata: Mapping[str, Any], card: str, save_tokenizer: bool = True
) -> None:
    """
    The one writer of a saved editor's folder (call it inside `hf_lime.atomic.write_folder` for an all-or-nothing
    save): PEFT's adapter files for the active adapter, flat even when it is not `"default"`; the tokenizer; the
    `lime_editor.json` description; the README.md model card.
    """
    adapter = model.active_adapter
    model.save_pretrained(str(folder), selected_adapters=[adapter], save_embedding_layers=False)
    if adapter != "default":  # peft writes non-default adapters into a subfolder
        for file in (folder / adapter).iterdir():
            os.replace(file, folder / file.name)
        (folder / adapter).rmdir()
    if save_tokenizer and tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    write_description(folder, metadata, card)


def write_description(folder: Path, metadata: Mapping[str, Any], card: str) -> None:
    """`lime_editor.json` and README.md, beside adapter files written by PEFT (also used by `LimeTrainer`)."""
    (folder / EDITOR_METADATA).write_text(json.dumps(dict(metadata), indent=2), encoding="utf-8")
    (folder / "README.md").write_text(card, encoding="utf-8")


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


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes; a config is at most {MAX_JSON_BYTES} bytes.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.name} in {str(path.parent)!r} is not valid JSON: {err}.") from err
    except RecursionError as err:
        raise ValueError(f"{path.name} in {str(path.parent)!r} nests its JSON too deeply to be a config.") from err


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


def _check_languages(languages: Any, source: str = ADAPTER_CONFIG) -> None:
    """A saved list is checked as any list (`hf_lime.languages`); a bad one is a bad file: `ValueError`."""
    if not isinstance(languages, list):  # JSON: a list, nothing else
        raise ValueError(f"`languages` in {source} must be a list of language codes, got {languages!r}.")
    try:
        check_languages(languages, source=source, allow_empty=True)
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
    _check_languages(saved, EDITOR_METADATA)
    expected = [dict(rename or {}).get(lang, lang) for lang in saved]
    if list(config.languages) != expected:
        raise ValueError(
            f"adapter_config.json lists the languages {list(config.languages)}, but the editor was saved with "
            f"{saved} (mask rows in that order): loading would give languages other languages' masks. Restore the "
            "order, or pass `rename_languages={saved_code: new_code}` if codes were only renamed."
        )


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
