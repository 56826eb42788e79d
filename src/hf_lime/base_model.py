"""The base model of a saved editor: its fingerprint (what the editor remembers of it), the checks against it,
and the loading steps that run only after the folder was checked (base model, tokenizer, adapter weights).

The base model is loaded with `use_safetensors=True` and `trust_remote_code=False`; a failed load leaves a
user's base model as it was.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from .editor_folder import ADAPTER_WEIGHTS
from .safetensors_io import check_tensor_layout, load_checked_tensors
from .tasks import auto_class, task_from_class_name
from .tuner.config import LimeConfig
from .tuner.layer import LimeLayer

# Base-model properties an editor depends on: a mismatch is an error. `SOFT_FIELDS` only warn.
HARD_FIELDS = ("architecture", "model_type", "hidden_size", "num_hidden_layers", "intermediate_size")
SOFT_FIELDS = ("vocab_size", "num_labels")


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
