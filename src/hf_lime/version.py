"""The installed version of hf_lime, from the package metadata (one source: `pyproject.toml`)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf_lime")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
