"""All-or-nothing writes of a folder (a saved editor, an exported LoRA adapter) and of a single file.

`write_folder(target, write)` lets `write` fill a fresh temporary folder beside `target`, then swaps it in: the old
folder is renamed aside, the new one renamed into place, the old one removed. Files of the old folder that the new
version does not write (e.g. `metrics.json` beside a saved editor) are carried over as hard links (copies where the
file system has none). Writers of one folder serialise on a lock file beside it (`fcntl.flock`, POSIX), and
`read_folder(target)` holds the same lock while a loader reads, so a reader sees the old complete version or the new
complete one, never a mix. A save killed at any point leaves either the old folder, or the new one, or the old one
renamed aside; the next save or load under the lock restores it and removes temporary folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; swaps stay atomic, concurrent writers are not serialised
    fcntl = None


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(_lock_path(target), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(p for p in target.parent.glob(f".{target.name}.{kind}-*") if p.is_dir())


def recover(target: Path) -> None:
    """Undo what a killed swap left (call it under the lock): restore the old folder if the new one never arrived,
    and remove temporary and old folders."""
    old = _siblings(target, "old")
    if not target.exists() and old:
        os.rename(old[-1], target)
        old = old[:-1]
    for leftover in [*old, *_siblings(target, "tmp")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into `new` every entry of `old` that `new` does not have."""
    for entry in old.iterdir():
        if (new / entry.name).exists():
            continue
        if entry.is_dir():
            shutil.copytree(entry, new / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, new / entry.name)


def _link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_folder(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """
    Write a folder all-or-nothing: `write(folder)` fills a temporary folder that then replaces `target` in one swap.

    Args:
        target (`str` or `os.PathLike`): The folder to create or replace.
        write (`Callable[[Path], None]`): Writes the new version's files into the folder it is given.

    Returns:
        `Path`: `target`.

    Raises:
        ValueError: `target` exists and is not a folder. Whatever `write` raises (the old folder is then untouched).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} exists and is not a folder.")
    with _locked(target):
        recover(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            write(tmp)
            if target.exists():
                _carry_over(target, tmp)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    return target


def is_local_folder(path: str | os.PathLike) -> bool:
    """A local folder, or one that a killed save left renamed aside (its lock file is there)."""
    path = Path(path)
    return path.is_dir() or _lock_path(path).exists()


@contextlib.contextmanager
def read_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the folder's lock while its files are read (a local folder only; it repairs a killed save first)."""
    target = Path(target)
    with _locked(target):
        recover(target)
        yield target


def write_file(path: str | os.PathLike, data: str) -> Path:
    """Write a text file all-or-nothing (a temporary file beside it, then one `os.replace`)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
