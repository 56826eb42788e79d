"""Make `evaluate.load("lime_xl_edit")` work offline by placing the module where evaluate's cache fallback finds it.

evaluate 0.4.x resolves a bare name as: `./lime_xl_edit.py` → `./lime_xl_edit/lime_xl_edit.py` → the Hub Space
`evaluate-metric/lime_xl_edit` → the newest cached copy (by modification time of the script) under
`$HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--lime_xl_edit/<64-hex hash>/lime_xl_edit.py`, imported as
the package `evaluate_modules.metrics.evaluate-metric--lime_xl_edit.<hash>.lime_xl_edit`. This module writes that
last location (with the `__init__.py` files evaluate itself writes) using evaluate's own hash of the script, so a
load by path reuses the same hash. It does not import evaluate.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from pathlib import Path

logger = logging.getLogger(__name__)

METRIC_MODULE_NAME = "lime_xl_edit"
SKIP_INSTALL_ENV = "HF_LIME_SKIP_METRIC_INSTALL"
_NAMESPACE = "evaluate-metric--" + METRIC_MODULE_NAME
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def metric_path() -> str:
    """The directory of the `lime_xl_edit` evaluate module inside the installed package.

    Returns a `str` because `evaluate.load` only accepts strings.

    Example:

    ```python
    >>> from hf_lime.metrics import metric_path
    >>> metric_path().endswith("lime_xl_edit")
    True

    ```
    """
    return str(Path(__file__).resolve().parent / METRIC_MODULE_NAME)


def _script_path() -> Path:
    return Path(metric_path()) / f"{METRIC_MODULE_NAME}.py"


def modules_cache_dir() -> Path:
    """`HF_MODULES_CACHE` exactly as evaluate resolves it (its value if evaluate is already imported)."""
    import sys

    evaluate_config = sys.modules.get("evaluate.config")
    if evaluate_config is not None:
        return Path(evaluate_config.HF_MODULES_CACHE)
    if os.getenv("HF_MODULES_CACHE"):
        return Path(os.environ["HF_MODULES_CACHE"])
    xdg_cache_home = os.getenv("XDG_CACHE_HOME", "~/.cache")
    hf_home = os.path.expanduser(os.getenv("HF_HOME", os.path.join(xdg_cache_home, "huggingface")))
    return Path(hf_home) / "modules"


def evaluate_module_hash(source: str) -> str:
    """evaluate's hash of a script (`files_to_hash`): sha256 of its lines with `#` comments removed."""
    lines = [re.sub(r"#.*", "", line) for line in io.StringIO(source).readlines()]
    return hashlib.sha256("\n".join(line for line in lines if line).encode("utf-8")).hexdigest()


def _atomic_write(path: Path, data: str) -> None:
    from ..atomic import write_file

    write_file(path, data)


def _make_packages(root: Path, module_dir: Path) -> None:
    """Create the directories and the `__init__.py` files evaluate creates on its own loads."""
    module_dir.mkdir(parents=True, exist_ok=True)
    package = module_dir
    while True:
        (package / "__init__.py").touch(exist_ok=True)
        if package == root:
            break
        package = package.parent


def _make_newest(script: Path) -> None:
    """Give `script` the newest modification time among cached versions, since evaluate picks the newest."""
    siblings = [p / script.name for p in script.parent.parent.iterdir() if len(p.name) == 64 and p != script.parent]
    newest = max((s.stat().st_mtime for s in siblings if s.is_file()), default=None)
    if newest is not None and newest >= script.stat().st_mtime:
        now = max(time.time(), newest + 1.0)
        os.utime(script, (now, now))


def install_evaluate_module(force: bool = False, modules_cache: str | Path | None = None) -> Path:
    """Copy the `lime_xl_edit` module into evaluate's module cache so `evaluate.load("lime_xl_edit")` finds it.

    Idempotent and cheap: when an identical copy is installed it only makes sure that copy is the newest cached
    version. Writes are atomic, so concurrent processes are safe.

    Args:
        force (`bool`, *optional*, defaults to `False`): Rewrite the files even when an identical copy exists.
        modules_cache (`str` or `Path`, *optional*): The modules cache root; defaults to `HF_MODULES_CACHE` as
            evaluate resolves it (`$HF_HOME/modules`, `~/.cache/huggingface/modules`).

    Returns:
        `Path`: The installed `lime_xl_edit.py`.

    Raises:
        OSError: When the cache directory cannot be written.
    """
    source_path = _script_path()
    source = source_path.read_text(encoding="utf-8")
    root = Path(modules_cache) if modules_cache is not None else modules_cache_dir()
    module_dir = root / "evaluate_modules" / "metrics" / _NAMESPACE / evaluate_module_hash(source)
    script = module_dir / f"{METRIC_MODULE_NAME}.py"
    if force or not script.is_file() or script.read_text(encoding="utf-8") != source:
        _make_packages(root, module_dir)
        _atomic_write(script, source)
        meta = {"original file path": str(source_path), "local file path": str(script)}
        _atomic_write(module_dir / f"{METRIC_MODULE_NAME}.json", json.dumps(meta))
        logger.info("Installed the %s evaluate module at %s", METRIC_MODULE_NAME, script)
    _make_newest(script)
    return script


def install_evaluate_module_on_import() -> Path | None:
    """What `import hf_lime` runs: `install_evaluate_module()`, never raising.

    Skipped when the environment variable `HF_LIME_SKIP_METRIC_INSTALL` is true; an unwritable cache is logged as
    a warning (load the module by path with `evaluate.load(metric_path())` then).

    Returns:
        `Path` or `None`: The installed script, or `None` when skipped or failed.
    """
    if os.getenv(SKIP_INSTALL_ENV, "").upper() in _TRUE_VALUES:
        return None
    try:
        return install_evaluate_module()
    except OSError as error:
        logger.warning(
            "Could not install the %s evaluate module (%s); load it by path: "
            "evaluate.load(hf_lime.metrics.metric_path()).",
            METRIC_MODULE_NAME,
            error,
        )
        return None
