"""Safetensors files read safely: the header's layout without loading a tensor, a check of that layout against
a model's tensors, and a load that refuses non-finite values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


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
